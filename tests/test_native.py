"""The native kernels' loader: built once, cached, shared OpenMP runtime, clean fallbacks."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from norm_testing import TOL, assert_double_backward_close

import normzoo
from normzoo import _native
from normzoo.norms import batch as batch_mod

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def assert_same_bits_for_any_thread_count(run, threads: int) -> None:
    """``run()`` returns the same tensors, bit for bit, with 1 and with ``threads`` threads."""
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref = run()
        torch.set_num_threads(threads)
        got = run()
    finally:
        torch.set_num_threads(old)
    for mine, want in zip(got, ref, strict=True):
        assert torch.equal(mine, want)


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """An empty cache folder and no library loaded yet (restored afterwards)."""
    monkeypatch.setenv("NORMZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(_native, "_libs", {})
    monkeypatch.setattr(_native, "_warned_no_compiler", False)
    return tmp_path / "cache"


# The loader's own tests build row_norm.c, its quickest library to compile (1.5 s against
# batch_norm.c's 7 and zoo.c's 11 on the 2-core VM): what they test is the cache, not a kernel.
def test_builds_into_the_cache_and_loads(fresh_loader):
    lib = _native.load("row_norm")
    assert lib is not None
    built = list(fresh_loader.glob("row_norm-*.so"))
    assert len(built) == 1
    assert _native.load("row_norm") is lib  # one load per process


def test_a_second_process_reuses_the_built_library(fresh_loader):
    _native.load("row_norm")
    (path,) = fresh_loader.glob("row_norm-*.so")
    stamp = path.stat().st_mtime_ns
    code = "from normzoo import _native; assert _native.load('row_norm') is not None"
    env = {**os.environ, "NORMZOO_CACHE_DIR": str(fresh_loader)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert [p.stat().st_mtime_ns for p in fresh_loader.glob("row_norm-*.so")] == [stamp]


def test_processes_building_at_once_all_succeed(tmp_path):
    # DDP ranks start together on a cold cache: each builds under its own name, then renames.
    code = (
        "import torch; from normzoo import _native; from normzoo._native import kernels; "
        "x = torch.randn(4, 6, 16); y = kernels.row_norm_forward(x, 3, None, None, 1e-5)[0]; "
        "torch.testing.assert_close(y, torch.group_norm(x, 3, None, None, 1e-5))"
    )
    env = {**os.environ, "NORMZOO_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert len(list(tmp_path.glob("row_norm-*.so"))) == 1
    assert not list(tmp_path.glob("tmp*"))  # no half-written files left behind


def test_kernels_share_torchs_openmp_runtime():
    # A second OpenMP runtime would keep its own spinning threads next to torch's.
    assert _native.load("batch_norm") is not None
    with open("/proc/self/maps") as f:
        runtimes = {line.split()[-1] for line in f if "libgomp" in line or "libiomp" in line}
    assert len(runtimes) == 1, runtimes


@pytest.mark.parametrize("cc", ["/nonexistent/cc", "false"])
def test_build_failure_warns_once_and_falls_back_to_torch(fresh_loader, monkeypatch, cc):
    # The operator library's own build failure is its tests' subject (it warns on its own):
    # here it counts as unavailable, as it was when this test ran after other test files
    # (running this file alone, it was still untried and warned a second time).
    monkeypatch.setattr(_native, "_ops_state", False)
    monkeypatch.setenv("CC", cc)
    monkeypatch.setattr(batch_mod, "NATIVE_MIN_NUMEL", 0)
    # no compiler at all: one warning for every library; a compiler that fails: per library
    match = "native kernels unavailable" if cc.startswith("/") else "'batch_norm' unavailable"
    with pytest.warns(RuntimeWarning, match=match):
        assert _native.load("batch_norm") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert not batch_mod.use_native_batch_stats(torch.empty(4, 6, 8, 8))
        ours, ref = normzoo.create("bn", 6), torch.nn.BatchNorm2d(6)
        x = torch.randn(4, 6, 8, 8)
        torch.testing.assert_close(ours(x), ref(x), **TOL)
        torch.testing.assert_close(ours.running_var, ref.running_var, **TOL)
    assert not list(fresh_loader.glob("*.so"))


def test_no_c_compiler_is_one_warning_for_every_library(fresh_loader, monkeypatch):
    """Without a C compiler no library builds, the operator library neither: one warning
    says so (there were four, the first claiming the C kernels would run through Python),
    and every norm runs on torch's kernels."""
    monkeypatch.setattr(_native, "_ops_state", None)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not _native.load_ops()
        assert [_native.load(n) for n in ("batch_norm", "row_norm", "zoo")] == [None] * 3
        for name in ("bn", "gn", "ln", "in", "frn", "evonorms0"):
            m = normzoo.create(name, 16)
            m(torch.randn(8, 16, 32, 32, requires_grad=True)).sum().backward()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert messages == [
        "normzoo: native kernels unavailable (C compiler '/nonexistent/cc' (from CC) not "
        "found); using torch's kernels (set NORMZOO_NATIVE=0 to skip building them)"
    ]
    assert not list(fresh_loader.glob("*.so"))


def test_other_platforms_use_torch_without_a_warning(fresh_loader, monkeypatch):
    monkeypatch.setattr(_native.sys, "platform", "darwin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _native.load("batch_norm") is None
        assert not batch_mod.use_native_batch_stats(torch.empty(4, 6, 8, 8))
    assert not fresh_loader.exists()


def test_switched_off_builds_nothing(fresh_loader, monkeypatch):
    monkeypatch.setenv("NORMZOO_NATIVE", "0")
    assert not _native.native_enabled()
    assert _native.load("batch_norm") is None
    assert not fresh_loader.exists()
    monkeypatch.delenv("NORMZOO_NATIVE")
    _native.set_enabled(False)
    try:
        assert _native.load("batch_norm") is None
    finally:
        _native.set_enabled(True)
    assert _native.load("row_norm") is not None  # (the quickest library to build)


@pytest.mark.parametrize(
    ("value", "enabled"),
    [(None, True), ("1", True), ("yes", True), ("0", False), (" Off ", False), ("FALSE", False)],
)
def test_native_switch_reads_the_environment_at_each_call(monkeypatch, value, enabled):
    # read through os.environ's own mapping: changes made after import count
    if value is None:
        monkeypatch.delenv("NORMZOO_NATIVE", raising=False)
    else:
        monkeypatch.setenv("NORMZOO_NATIVE", value)
    assert _native.native_enabled() is enabled
    monkeypatch.setattr(_native, "_ENVIRON", None)  # no such mapping: os.environ.get
    assert _native.native_enabled() is enabled


def test_kernel_wrappers_refuse_what_the_c_code_does_not_handle():
    from normzoo._native import kernels

    with pytest.raises(ValueError, match="contiguous float32"):
        kernels.batch_norm_forward(torch.randn(2, 3, 4, dtype=torch.float64), None, None, 1e-5)
    with pytest.raises(ValueError, match="not contiguous"):
        kernels.batch_norm_forward(torch.randn(2, 4, 3).transpose(1, 2), None, None, 1e-5)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_results_do_not_depend_on_the_thread_count(threads):
    from normzoo._native import kernels

    x = torch.randn(6, 5, 33) * 3 + 1
    assert_same_bits_for_any_thread_count(
        lambda: list(kernels.batch_norm_forward(x, None, None, 1e-5)), threads
    )


@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
@pytest.mark.parametrize("threads", [2, 3])
def test_contiguous_kernels_match_float64_for_any_thread_count(threads, relu):
    """Several blocks of channels (batch norm) and rows (group norm) per thread, a short last
    block; rows of 55,500 values, which the group-norm forward pipelines (the next row summed
    as this one is mapped, in chunks of 1024 values that straddle the channels' edges), and
    rows of 1500, which it takes one at a time; channels of 1500 values, whose outputs start
    anywhere in a cache line (written one value at a time up to the first line boundary,
    then in whole lines)."""
    from normzoo._native import kernels

    g = torch.Generator().manual_seed(0)
    # batch norm: 24 KB per channel, blocks of 10 channels (7 with 3 threads), the last short
    x = torch.randn(4, 37, 1500, generator=g) * 3 + 1
    dy = torch.randn(x.shape, generator=g)
    w, b = torch.rand(37, generator=g) + 0.5, torch.randn(37, generator=g)
    act = torch.relu if relu else (lambda t: t)

    def bn() -> list[torch.Tensor]:
        y, stats, _ = kernels.batch_norm_forward_unchecked(x, w, b, 1e-5, False, relu=relu)
        grads = kernels.batch_norm_backward_unchecked(
            dy, x, w, stats, (True, True, True), relu=relu, bias=b
        )
        return [y, stats, *grads]

    def rows(groups: int) -> list[torch.Tensor]:
        y, stats, _ = kernels.row_norm_forward_unchecked(x, groups, w, b, 1e-5, False, relu=relu)
        # the plain backward (the fused ReLU's masks dy, then runs the same dx loop)
        grads = kernels.row_norm_backward_unchecked(dy, x, groups, w, stats, (True, True, True))
        return [y, stats, *grads]

    for run in (bn, lambda: rows(1), lambda: rows(37)):
        assert_same_bits_for_any_thread_count(run, threads)

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = bn()
        got_rows = {groups: rows(groups) for groups in (1, 37)}
    finally:
        torch.set_num_threads(old)
    x64, dy64, w64, b64 = (t.double().requires_grad_() for t in (x, dy, w, b))
    y64 = act(torch.nn.functional.batch_norm(x64, None, None, w64, b64, training=True))
    want = [y64, *torch.autograd.grad(y64, (x64, w64, b64), dy64)]
    # dw and db are sums of 6000 float32 terms of size ~1 whose rounding depends on the vector
    # width the compiler picked for this CPU (2e-5 off float64 on an AMD EPYC): 1e-4 for them
    atol = [1e-5, 1e-5, 1e-4, 1e-4]
    for mine, ref, tol in zip([got[0], *got[2:]], want, atol, strict=True):
        torch.testing.assert_close(mine.double(), ref, rtol=1e-5, atol=tol)
    for groups, (y, stats, *grads) in got_rows.items():
        y64 = torch.nn.functional.group_norm(x64, groups, w64, b64)
        torch.testing.assert_close(y.double(), act(y64).detach(), rtol=1e-5, atol=1e-5)
        rows64 = x64.detach().reshape(4, groups, -1)
        torch.testing.assert_close(stats[0].double(), rows64.mean(-1), rtol=1e-6, atol=1e-6)
        want = torch.autograd.grad(y64, (x64, w64, b64), dy64)
        for mine, ref, tol in zip(grads, want, atol[1:], strict=True):
            torch.testing.assert_close(mine.double(), ref, rtol=1e-5, atol=tol)


def test_channels_last_wrappers_refuse_other_layouts():
    from normzoo._native import kernels

    with pytest.raises(ValueError, match="channels_last"):
        kernels.batch_norm_forward_cl(torch.randn(2, 3, 4, 5), None, None, 1e-5)  # contiguous
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64).to(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="float64"):
        kernels.batch_norm_forward_cl(x, None, None, 1e-5)
    with pytest.raises(ValueError, match="channels_last"):  # a 3-d input has no such format
        kernels.batch_norm_forward_cl(torch.randn(2, 5, 3).transpose(1, 2), None, None, 1e-5)
    x = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    stats = kernels.batch_norm_forward_cl(x, None, None, 1e-5)[1:3]
    with pytest.raises(ValueError, match="not contiguous"):  # per-channel tensors: contiguous
        kernels.batch_norm_backward_cl(x, x, torch.ones(6)[::2], *stats, (True, True, True))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    "shape",
    [(7, 300, 9, 11), (3, 20, 5, 7, 9)],  # 693 rows of 300 channels; 945 rows of 20
    ids=str,
)
def test_channels_last_results_do_not_depend_on_the_thread_count(threads, shape):
    # rows are split into blocks of a fixed size and the blocks' sums added in block order
    from normzoo._native import kernels

    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    x = (torch.randn(shape) * 3 + 1).contiguous(memory_format=fmt)
    dy = torch.randn(shape).contiguous(memory_format=fmt)
    w, b = torch.rand(shape[1]) + 0.5, torch.randn(shape[1])

    def run() -> list[torch.Tensor]:
        y, mean, invstd, var = kernels.batch_norm_forward_cl(x, w, b, 1e-5)
        grads = kernels.batch_norm_backward_cl(dy, x, w, mean, invstd, (True, True, True))
        return [y, mean, invstd, var, *grads]

    assert_same_bits_for_any_thread_count(run, threads)


def test_channels_last_kernels_run_from_several_python_threads_at_once():
    # the kernels release the GIL and keep one workspace per thread: no shared scratch memory
    from concurrent.futures import ThreadPoolExecutor

    from normzoo._native import kernels

    inputs = [
        (torch.randn(6, c, 9, 7) * 2 + 1).contiguous(memory_format=torch.channels_last)
        for c in (8, 300, 40, 300)
    ]

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for _ in range(20):
            y, mean, invstd, _ = kernels.batch_norm_forward_cl(x, None, None, 1e-5)
            dx = kernels.batch_norm_backward_cl(x, x, None, mean, invstd, (True, False, False))[0]
            outs = [y, dx]
        return outs

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, inputs))
    for x, (y, dx) in zip(inputs, results, strict=True):
        xr = x.clone().requires_grad_()
        yr = torch.nn.functional.batch_norm(xr, None, None, training=True)
        yr.backward(x)
        torch.testing.assert_close(y, yr, **TOL)
        torch.testing.assert_close(dx, xr.grad, **TOL)


# -- the C++ operator library (ops.cpp): torch.ops.normzoo.group_norm -----------------------------
@pytest.fixture
def fresh_ops(monkeypatch, tmp_path):
    """The operator library not tried yet in this process, an empty cache (restored after)."""
    monkeypatch.setenv("NORMZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(_native, "_ops_state", None)
    return tmp_path / "cache"


def test_cache_keys_cover_the_shared_header(monkeypatch):
    """A change to nz_simd.h (included by batch_norm.c and row_norm.c) rebuilds the C
    libraries and the operator library: the header is part of every cache key."""
    cc, cxx = _native._compiler(), _native._cxx_compiler()
    if cc is None or cxx is None:
        pytest.skip("no C/C++ compiler")
    assert b"nz_map_lines" in _native._headers()
    before = [_native._library_path(n, cc) for n in ("batch_norm", "row_norm", "zoo")]
    before.append(_native._ops_library_path(cc, cxx))
    monkeypatch.setattr(_native, "_headers", lambda: b"/* changed */")
    after = [_native._library_path(n, cc) for n in ("batch_norm", "row_norm", "zoo")]
    after.append(_native._ops_library_path(cc, cxx))
    assert all(a != b for a, b in zip(after, before, strict=True))


def test_ops_library_is_built_cached_and_reused():
    """Loaded once per process from the cache (built there the first time), and a second
    process loads the cached file without building it again."""
    assert _native.load_ops()
    assert hasattr(torch.ops.normzoo, "group_norm")
    path = _native._ops_library_path(_native._compiler(), _native._cxx_compiler())
    stamp = path.stat().st_mtime_ns
    code = (
        "import time; from normzoo import _native; t = time.perf_counter(); "
        "assert _native.load_ops(); print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 5  # a load, not a ~30 s build
    assert path.stat().st_mtime_ns == stamp


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sched_getaffinity: Linux")
def test_a_failed_compile_ends_the_others_and_names_its_errors(tmp_path, monkeypatch):
    """The operator library's compiles run at once (``_run_all``); the first to fail kills
    the ones still running (none is left behind, even where it would never finish) and the
    error carries its command and its output."""
    monkeypatch.setattr(_native.os, "sched_getaffinity", lambda pid: {0, 1})
    pid_file = tmp_path / "pid"
    slow = ["sh", "-c", f"echo $$ > {pid_file}; exec sleep 600"]
    bad = ["sh", "-c", f"while [ ! -s {pid_file} ]; do :; done; echo 'ops.cpp:1: boom' >&2; exit 3"]
    with pytest.raises(RuntimeError, match=r"(?s)exit 3 failed:\nops\.cpp:1: boom$"):
        _native._run_all([slow, bad, ["touch", str(tmp_path / "never")]], str(tmp_path))
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)
    assert not (tmp_path / "never").exists()  # queued behind the two: never started
    _native._run_all(
        [["touch", str(tmp_path / "a")], ["touch", str(tmp_path / "b")]], str(tmp_path)
    )
    assert (tmp_path / "a").exists() and (tmp_path / "b").exists()


@pytest.mark.parametrize("cxx", ["/nonexistent/c++", "false"])
def test_ops_build_failure_warns_once_and_keeps_the_python_path(fresh_ops, monkeypatch, cxx):
    from normzoo.norms import _rownorm

    monkeypatch.setenv("CXX", cxx)
    with pytest.warns(RuntimeWarning, match="native operator library unavailable"):
        assert not _native.load_ops()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert not _native.ops_available()
        # GroupNorm below 1M elements keeps torch's kernel; InstanceNorm the Python Function
        assert not _rownorm.use_native_row_norm(torch.empty(8, 256, 14, 14), None, 32)
        assert _rownorm.use_native_row_norm(torch.empty(8, 256, 14, 14), None, 256)
        ours, ref = normzoo.create("in", 256), torch.nn.InstanceNorm2d(256, affine=True)
        x = torch.randn(8, 256, 14, 14, requires_grad=True)
        y = ours(x)
        assert type(y.grad_fn).__name__ == "_NativeGroupNormBackward"
        torch.testing.assert_close(y, ref(x), **TOL)
    assert not list(fresh_ops.glob("ops-*.so"))


def test_ops_other_platforms_and_switch_build_nothing(fresh_ops, monkeypatch):
    monkeypatch.setattr(_native.sys, "platform", "darwin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _native.load_ops()
    monkeypatch.setattr(_native, "_ops_state", None)
    monkeypatch.setattr(_native.sys, "platform", "linux")
    monkeypatch.setenv("NORMZOO_NATIVE", "0")
    assert not _native.ops_available()
    assert not fresh_ops.exists()


def _gn_inputs(affine: bool, shape=(4, 8, 5, 3)):
    x = torch.randn(shape) * 3 + 2
    w = (torch.rand(shape[1]) + 0.5) if affine else None
    b = torch.randn(shape[1]) if affine else None
    return x, w, b


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 8])
# (4, 8, 5, 3): one group is 8 channels of 15 positions (the backward's sums take short
# channels eight at a time, with a tail of 7 positions); (3, 24, 4, 4): 24 and 12 channels
# per group (blocks of eight, and a remainder of 4 channels one at a time)
@pytest.mark.parametrize("shape", [(4, 8, 5, 3), (3, 24, 4, 4)], ids=str)
def test_ops_group_norm_equals_torch_forward_and_backward(affine, groups, shape):
    assert _native.load_ops()
    x, w, b = _gn_inputs(affine, shape)
    leaves = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
    refs = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
    wa, ba = (leaves[1], leaves[2]) if affine else (None, None)
    wr, br = (refs[1], refs[2]) if affine else (None, None)
    y, stats, var = torch.ops.normzoo.group_norm(leaves[0], groups, wa, ba, 1e-5, True)
    y_ref = torch.group_norm(refs[0], groups, wr, br, 1e-5)
    assert type(y.grad_fn).__name__ == "CppFunction"
    torch.testing.assert_close(y, y_ref, **TOL)
    rows = x.reshape(shape[0], groups, -1)
    torch.testing.assert_close(stats[0], rows.mean(-1), **TOL)
    torch.testing.assert_close(var, rows.var(-1, unbiased=False), **TOL)
    assert not stats.requires_grad and not var.requires_grad
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, g), torch.autograd.grad(y_ref, refs, g)
    for a, r in zip(*grads, strict=True):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)


def test_ops_group_norm_partial_gradients_and_no_grad_modes():
    assert _native.load_ops()
    x, w, b = _gn_inputs(True)
    frozen_w = w.clone()  # no gradient for the weight: x and the bias still get theirs
    xb, bb = x.clone().requires_grad_(), b.clone().requires_grad_()
    y, _, var = torch.ops.normzoo.group_norm(xb, 2, frozen_w, bb, 1e-5, False)
    assert var.numel() == 0
    y.sum().backward()
    xr, br = x.clone().requires_grad_(), b.clone().requires_grad_()
    torch.group_norm(xr, 2, frozen_w, br, 1e-5).sum().backward()
    torch.testing.assert_close(xb.grad, xr.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bb.grad, br.grad, **TOL)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            y, _, _ = torch.ops.normzoo.group_norm(x, 2, w, b, 1e-5, False)
        torch.testing.assert_close(y, torch.group_norm(x, 2, w, b, 1e-5), **TOL)


@pytest.mark.parametrize("affine", [True, False])
def test_ops_group_norm_double_backward_equals_torch(affine):
    assert _native.load_ops()
    x, w, b = _gn_inputs(affine)
    out = []
    for fn in (
        lambda t: torch.ops.normzoo.group_norm(t, 2, w, b, 1e-5, False)[0],
        lambda t: torch.group_norm(t, 2, w, b, 1e-5),
    ):
        t = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(fn(t).pow(2).sum(), t, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(3).sum(), t)
        out.append((g, gg))
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[0][1], out[1][1], atol=1e-3, rtol=1e-3)


def test_groupnorm_module_runs_on_the_cpp_node():
    """Mid-sized GroupNorm/LayerNorm/InstanceNorm in training: the operator's C++ node."""
    assert _native.load_ops()
    for name in ("gn", "ln", "in"):
        x = torch.randn(8, 256, 14, 14, requires_grad=True)
        y = normzoo.create(name, 256)(x)
        assert type(y.grad_fn).__name__ == "CppFunction", name


# -- the operator on channels_last input: row_norm.c's (N, L, C) kernels -----------------------
CL_CASES = [
    # shape, groups: C a multiple of 64, of 16 (a narrower tile), neither (the scalar tail);
    # one group (LayerNorm's moments over the whole sample), one channel per group (IN);
    # more than 1024 positions (several super-blocks); fewer samples than threads (split)
    ((4, 64, 5, 7), 8),
    ((3, 48, 6, 5), 3),
    ((2, 70, 4, 3), 7),
    ((5, 6, 9, 11), 1),
    ((4, 100, 3, 4), 100),
    ((2, 16, 40, 40), 4),
    ((1, 24, 37, 41), 1),
    ((1, 80, 33, 33), 80),
    ((3, 12, 3, 4, 5), 6),
]


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(
        memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d
    )


def _is_cl(t: torch.Tensor) -> bool:
    fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
    return t.is_contiguous(memory_format=fmt) and not t.is_contiguous()


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(("shape", "groups"), CL_CASES, ids=str)
def test_ops_group_norm_channels_last_equals_float64_torch(shape, groups, affine):
    assert _native.load_ops()
    x, w, b = _gn_inputs(affine, shape)
    xa = _cl(x).requires_grad_()
    params = [t.clone().requires_grad_() for t in (w, b) if t is not None]
    y, stats, var = torch.ops.normzoo.group_norm(xa, groups, *(params or [None, None]), 1e-5, True)
    assert _is_cl(y), "the output keeps the channels_last layout"
    x64 = x.double().requires_grad_()
    p64 = [t.double().requires_grad_() for t in (w, b) if t is not None]
    y64 = torch.group_norm(x64, groups, *(p64 or [None, None]), 1e-5)
    torch.testing.assert_close(y, y64.float(), **TOL)
    rows = x.double().reshape(shape[0], groups, -1)
    torch.testing.assert_close(stats[0], rows.mean(-1).float(), **TOL)
    torch.testing.assert_close(var, rows.var(-1, unbiased=False).float(), **TOL)
    g = torch.randn(shape)
    got = torch.autograd.grad(y, [xa, *params], _cl(g))
    want = torch.autograd.grad(y64, [x64, *p64], g.double())
    assert _is_cl(got[0])
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize(
    ("shape", "groups"), [((1, 64, 40, 40), 4), ((3, 8, 50, 50), 1), ((8, 40, 9, 9), 5)], ids=str
)
def test_ops_group_norm_channels_last_does_not_depend_on_the_thread_count(shape, groups, threads):
    # each sample's positions are summed in super-blocks of a fixed size, added in order:
    # whole samples per thread or super-blocks spread over threads give the same bits
    assert _native.load_ops()
    x, w, b = _gn_inputs(True, shape)
    g = _cl(torch.randn(shape))

    def run() -> list[torch.Tensor]:
        leaves = [_cl(x).requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()]
        y, stats, var = torch.ops.normzoo.group_norm(
            leaves[0], groups, leaves[1], leaves[2], 1e-5, True
        )
        return [y, stats, var, *torch.autograd.grad(y, leaves, g)]

    assert_same_bits_for_any_thread_count(run, threads)


def test_ops_group_norm_channels_last_takes_any_gradient_layout_and_large_means():
    assert _native.load_ops()
    x = torch.randn(4, 32, 6, 6) * 0.01 + 1000.0  # std 1e-5 of the mean: no cancellation
    xa = _cl(x).requires_grad_()
    y, _, var = torch.ops.normzoo.group_norm(xa, 4, None, None, 1e-8, True)
    rows = x.double().reshape(4, 4, -1)
    torch.testing.assert_close(var.double(), rows.var(-1, unbiased=False), rtol=1e-3, atol=0)
    g = torch.randn(4, 32, 6, 6)  # contiguous gradient for a channels_last input
    (dx,) = torch.autograd.grad(y, xa, g)
    x64 = x.double().requires_grad_()
    (want,) = torch.autograd.grad(torch.group_norm(x64, 4, None, None, 1e-8), x64, g.double())
    assert _is_cl(dx)
    scale = want.abs().max().item()  # about 1 / std: 1e2
    torch.testing.assert_close(dx.double(), want, atol=1e-3 * scale, rtol=0)


def test_ops_group_norm_channels_last_double_backward_equals_torch():
    assert _native.load_ops()
    x, w, b = _gn_inputs(True, (3, 16, 5, 4))
    assert_double_backward_close(
        lambda t: torch.ops.normzoo.group_norm(t, 4, w, b, 1e-5, False)[0],
        _cl(x),
        lambda t: torch.group_norm(t, 4, w, b, 1e-5),
        _cl(x),
    )


@pytest.mark.parametrize(("name", "kw"), [("gn", {"num_groups": 8}), ("ln", {}), ("in", {})])
def test_channels_last_modules_run_on_the_cpp_node_and_keep_the_layout(name, kw):
    assert _native.load_ops()
    x = _cl(torch.randn(8, 64, 14, 14)).requires_grad_()
    norm = normzoo.create(name, 64, **kw)
    y = norm(x)
    assert type(y.grad_fn).__name__ == "CppFunction", name
    assert _is_cl(y)
    y.backward(_cl(torch.randn_like(y)))
    assert _is_cl(x.grad)


def test_ops_group_norm_refuses_what_its_kernels_cannot_read_and_copies_other_strides():
    assert _native.load_ops()
    op = torch.ops.normzoo.group_norm
    x = torch.randn(2, 6, 5, 4)
    for bad, match in [
        ((x.double(), 2, None, None), "float32 CPU"),
        ((x, 4, None, None), "must divide"),
        ((x, 2, torch.ones(5), None), "weight and bias"),
        ((x, 2, None, torch.ones(6, dtype=torch.float64)), "weight and bias"),
        ((torch.empty(0, 6, 5, 4), 2, None, None), "non-empty"),
    ]:
        with pytest.raises(RuntimeError, match=match):
            op(*bad, 1e-5, False)
    strided = torch.randn(2, 6, 5, 8)[..., ::2]  # neither contiguous nor channels_last
    y = op(strided, 3, None, None, 1e-5, False)[0]
    torch.testing.assert_close(y, torch.group_norm(strided, 3, None, None, 1e-5), **TOL)


# -- RMSNorm on tokens: zoo.c's fused token kernels ---------------------------------------------
def _rms_pair(c: int, affine: bool):
    ours = normzoo.create("rmsnorm", c, channels_last=True, affine=affine)
    if affine:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5)
            ours.bias.uniform_(-0.5, 0.5)
    return ours


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(2048, 64), (3, 300, 40), (1000, 37), (40, 1030)], ids=str)
def test_rms_tokens_equal_float64_torch(shape, affine):
    from normzoo.norms._tokens import TOKEN_MIN_NUMEL

    assert math.prod(shape) >= TOKEN_MIN_NUMEL  # the native path
    c = shape[-1]
    ours = _rms_pair(c, affine)
    x = (torch.randn(shape) * 2 + 1).requires_grad_()
    y = ours(x)
    assert type(y.grad_fn).__name__ == "_RMSTokensBackward"
    params = [ours.weight, ours.bias] if affine else []
    x64 = x.detach().double().requires_grad_()
    p64 = [p.detach().double().requires_grad_() for p in params]
    y64 = torch.nn.functional.rms_norm(x64, (c,), p64[0] if affine else None, 1e-5)
    y64 = y64 + p64[1] if affine else y64
    torch.testing.assert_close(y, y64.float(), **TOL)
    g = torch.randn(shape)
    got = torch.autograd.grad(y, [x, *params], g)
    want = torch.autograd.grad(y64, [x64, *p64], g.double())
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e.float(), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), y64.float(), **TOL)


@pytest.mark.parametrize("threads", [2, 3])
def test_rms_tokens_do_not_depend_on_the_thread_count(threads):
    # the parameters' column sums go per block of rows, added in block order
    ours = _rms_pair(96, True)
    x = torch.randn(1000, 96) * 3 + 1
    g = torch.randn(1000, 96)

    def run() -> list[torch.Tensor]:
        xa = x.clone().requires_grad_()
        y = ours(xa)
        return [y, *torch.autograd.grad(y, [xa, ours.weight, ours.bias], g)]

    assert_same_bits_for_any_thread_count(run, threads)


def test_rms_tokens_partial_gradients_double_backward_and_small_inputs():
    ours = _rms_pair(64, True)
    x = torch.randn(1024, 64)
    ours.weight.requires_grad_(False)  # frozen weight: x and the bias still get theirs
    xa = x.clone().requires_grad_()
    ours(xa).sum().backward()
    xr = x.clone().requires_grad_()
    bias = ours.bias.detach()
    (torch.nn.functional.rms_norm(xr, (64,), ours.weight, 1e-5) + bias).sum().backward()
    torch.testing.assert_close(xa.grad, xr.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.bias.grad, torch.full((64,), 1024.0))
    ours.weight.requires_grad_(True)
    assert_double_backward_close(
        ours, x, lambda t: torch.nn.functional.rms_norm(t, (64,), ours.weight, 1e-5) + bias, x
    )
    small = ours(torch.randn(4, 64, requires_grad=True))  # below TOKEN_MIN_NUMEL: torch's
    assert type(small.grad_fn).__name__ != "_RMSTokensBackward"
    strided = torch.randn(1024, 128)[:, ::2].requires_grad_()  # not contiguous: torch's
    assert type(ours(strided).grad_fn).__name__ != "_RMSTokensBackward"


# -- FRN + TLU on tokens (no spatial positions): zoo.c's elementwise token kernels ---------
def _frn_tokens_case(c: int, ties: bool):
    ours = normzoo.create("frn", c)
    if not ties:  # default init (bias = tau = 0) makes x = 0 a tie of y with tau
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5)
            ours.bias.uniform_(-0.5, 0.5)
            ours.tau.uniform_(-0.3, 0.3)
    return ours


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape", [(2048, 64), (1000, 37)], ids=str)
def test_frn_tokens_equal_float64_reference(shape, ties):
    ours = _frn_tokens_case(shape[1], ties)
    x = torch.randn(shape)
    if ties:
        x[::7] = 0.0
    x.requires_grad_()
    z = ours(x)
    assert type(z.grad_fn).__name__ == "_FRNTokensBackward"
    params = [ours.weight, ours.bias, ours.tau]
    x64 = x.detach().double().requires_grad_()
    p64 = [p.detach().double().requires_grad_() for p in params]
    z64 = normzoo.functional.filter_response_norm(x64, *p64, eps=ours.eps)
    torch.testing.assert_close(z, z64.float(), **TOL)
    g = torch.randn(shape)
    got = torch.autograd.grad(z, [x, *params], g)
    want = torch.autograd.grad(z64, [x64, *p64], g.double())
    for a, e in zip(got, want, strict=True):  # dx grows like 1/|x|^3 near 0: relative
        torch.testing.assert_close(a.double(), e, atol=1e-5 * float(e.abs().max()), rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), z64.float(), **TOL)


@pytest.mark.parametrize("threads", [2, 3])
def test_frn_tokens_do_not_depend_on_the_thread_count(threads):
    ours = _frn_tokens_case(80, False)
    x, g = torch.randn(1000, 80), torch.randn(1000, 80)

    def run() -> list[torch.Tensor]:
        xa = x.clone().requires_grad_()
        z = ours(xa)
        return [z, *torch.autograd.grad(z, [xa, ours.weight, ours.bias, ours.tau], g)]

    assert_same_bits_for_any_thread_count(run, threads)


def test_frn_tokens_double_backward_and_other_inputs_take_the_reference_math():
    ours = _frn_tokens_case(64, False)
    x = torch.randn(1024, 64)
    out = []
    for fn in (
        ours,
        lambda t: normzoo.functional.filter_response_norm(
            t, ours.weight, ours.bias, ours.tau, eps=ours.eps
        ),
    ):
        t = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(fn(t).pow(2).sum(), t, create_graph=True)
        (ggx,) = torch.autograd.grad(gx.sum(), t)
        out.append((gx, ggx))
    scale = float(out[1][1].abs().max())
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[0][1], out[1][1], atol=1e-4 * scale, rtol=1e-3)
    for other in (torch.randn(4, 64), torch.randn(1024, 128)[:, ::2]):  # small; strided
        assert type(ours(other.requires_grad_()).grad_fn).__name__ != "_FRNTokensBackward"
    learned = normzoo.create("frn", 64, learnable_eps=True)  # eps with a gradient: reference
    assert type(learned(x.requires_grad_()).grad_fn).__name__ != "_FRNTokensBackward"


# -- GroupNorm, EvoNorm-S0 and EvoNorm-B0 on tokens: zoo.c's fused token kernels --------------
def _token_norm(name: str, c: int, affine: bool = True, **kwargs):
    """A norm of ``c`` channels with random parameters (``v`` away from 1 where there is one)."""
    ours = normzoo.create(name, c, affine=affine, **kwargs)
    with torch.no_grad():
        for p in ours.parameters():
            p.uniform_(0.5, 1.5)
        if affine:
            ours.bias.uniform_(-0.5, 0.5)
    return ours


def _token_reference(name: str, ours, x: torch.Tensor, params: list[torch.Tensor]):
    """The reference math of ``ours`` on ``x`` with its parameters replaced by ``params``
    (same order as ``ours.parameters()``)."""
    named = dict(zip([n for n, _ in ours.named_parameters()], params, strict=True))
    w, b = named.get("weight"), named.get("bias")
    if name == "groupnorm":
        return normzoo.functional.group_norm(x, ours.num_groups, w, b, eps=ours.eps)
    if name == "evonorms0":
        return normzoo.functional.evonorm_s0(x, named["v"], ours.num_groups, w, b, eps=ours.eps)
    running = ours.running_var.double() if ours.running_var is not None else None
    return normzoo.functional.evonorm_b0(
        x, named["v"], running, w, b, training=ours.training, momentum=0.0, eps=ours.eps
    )[0]


TOKEN_NORMS = [
    ("groupnorm", "_GroupTokensBackward"),
    ("evonorms0", "_GroupTokensBackward"),
    ("evonormb0", "_B0TokensBackward"),
]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(2048, 64), (1000, 48), (1003, 48), (300, 1030)], ids=str)
@pytest.mark.parametrize(("name", "node"), TOKEN_NORMS, ids=[n for n, _ in TOKEN_NORMS])
def test_token_kernels_equal_float64_reference(name, node, shape, training, affine):
    from normzoo.norms._tokens import TOKEN_MIN_NUMEL

    assert math.prod(shape) >= TOKEN_MIN_NUMEL  # the native path
    kwargs = {} if name == "evonormb0" else {"num_groups": 2 if shape[1] == 1030 else 8}
    ours = _token_norm(name, shape[1], affine, **kwargs).train(training)
    if name == "evonormb0":
        ours.running_var.uniform_(0.5, 4.0)
    x = (torch.randn(shape) * 2 + 1).requires_grad_()
    params = list(ours.parameters())
    x64 = x.detach().double().requires_grad_()
    p64 = [p.detach().double().requires_grad_() for p in params]
    y64 = _token_reference(name, ours, x64, p64)
    y = ours(x)
    assert type(y.grad_fn).__name__ == node
    torch.testing.assert_close(y, y64.float(), **TOL)
    g = torch.randn(shape)
    got = torch.autograd.grad(y, [x, *params], g)
    want = torch.autograd.grad(y64, [x64, *p64], g.double())
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(
            a.double(), e, atol=1e-4 * max(1.0, float(e.abs().max())), rtol=1e-4
        )
    with torch.no_grad():  # without autograd: the same forward
        torch.testing.assert_close(ours(x), y64.float(), **TOL)


def test_evonorm_b0_tokens_running_variance_equals_reference():
    ours = _token_norm("evonormb0", 64)
    ref = _token_norm("evonormb0", 64, impl="reference")
    ref.load_state_dict(ours.state_dict())
    for _ in range(3):
        x = torch.randn(1024, 64) * 3 + 2
        y = ours(x.clone().requires_grad_())
        assert type(y.grad_fn).__name__ == "_B0TokensBackward"
        ref(x)
    torch.testing.assert_close(ours.running_var, ref.running_var, **TOL)
    assert int(ours.num_batches_tracked) == 3


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("name", [n for n, _ in TOKEN_NORMS])
def test_token_kernels_do_not_depend_on_the_thread_count(name, threads):
    # the column sums go per block of rows, added in block order
    ours = _token_norm(name, 96)
    x, g = torch.randn(1000, 96) * 3 + 1, torch.randn(1000, 96)

    def run() -> list[torch.Tensor]:
        xa = x.clone().requires_grad_()
        y = ours(xa)
        return [y, *torch.autograd.grad(y, [xa, *ours.parameters()], g)]

    assert_same_bits_for_any_thread_count(run, threads)


@pytest.mark.parametrize("name", [n for n, _ in TOKEN_NORMS])
def test_token_kernels_partial_gradients_double_backward_and_other_inputs(name):
    ours = _token_norm(name, 64, **({} if name == "evonormb0" else {"num_groups": 8}))
    x = torch.randn(1024, 64) * 2 + 1
    ours.weight.requires_grad_(False)  # frozen weight: the rest still get theirs
    xa = x.clone().requires_grad_()
    ours(xa).pow(2).sum().backward()
    x64 = x.double().requires_grad_()
    p64 = [p.detach().double().requires_grad_(p.requires_grad) for p in ours.parameters()]
    _token_reference(name, ours, x64, p64).pow(2).sum().backward()
    mine = [xa.grad, *(p.grad for p in ours.parameters() if p.requires_grad)]
    want = [x64.grad, *(p.grad for p in p64 if p.requires_grad)]
    assert ours.weight.grad is None and len(mine) == len(list(ours.parameters()))
    for a, e in zip(mine, want, strict=True):
        torch.testing.assert_close(a.double(), e, atol=1e-5 * float(e.abs().max()), rtol=1e-4)
    ours.weight.requires_grad_(True)
    params = list(ours.parameters())
    assert_double_backward_close(ours, x, lambda t: _token_reference(name, ours, t, params), x)
    for other in (torch.randn(4, 64), torch.randn(1024, 128)[:, ::2]):  # small; strided
        assert type(ours(other.requires_grad_()).grad_fn).__name__ not in dict(TOKEN_NORMS).values()


# -- Ghost BN on tokens: batch_norm.c's kernel, every virtual batch in one call ---------------
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(("n", "vbs"), [(1024, 32), (1000, 48), (640, 640)], ids=str)
def test_ghost_tokens_equal_float64_reference(n, vbs, affine, ghost_path):
    ours = normzoo.create("ghostbatchnorm", 80, virtual_batch_size=vbs, affine=affine)
    ref = normzoo.create(
        "ghostbatchnorm", 80, virtual_batch_size=vbs, affine=affine, impl="reference"
    )
    if affine:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5)
            ours.bias.uniform_(-0.5, 0.5)
    ref.load_state_dict(ours.state_dict())
    ref.double()
    for _ in range(2):  # twice: the running statistics carry over
        x = (torch.randn(n, 80) * 3 + 2).requires_grad_()
        y = ours(x)
        assert ghost_path.ran(y)
        x64 = x.detach().double().requires_grad_()
        y64 = ref(x64)
        torch.testing.assert_close(y, y64.float(), **TOL)
        g = torch.randn(n, 80)
        params, p64 = list(ours.parameters()), list(ref.parameters())
        got = torch.autograd.grad(y, [x, *params], g)
        want = torch.autograd.grad(y64, [x64, *p64], g.double())
        for a, e in zip(got, want, strict=True):
            torch.testing.assert_close(a.double(), e, atol=1e-4, rtol=1e-4)
    for mine, theirs in zip(ours.buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(mine.double(), theirs.double(), atol=1e-5, rtol=1e-5)
    assert int(ours.num_batches_tracked) == 2 * -(-n // vbs)
    with torch.no_grad():  # no autograd: the same kernel
        x = torch.randn(n, 80)
        ours.train(), ref.train()
        torch.testing.assert_close(ours(x), ref(x.double()).float(), **TOL)


@pytest.mark.parametrize("threads", [2, 3])
def test_ghost_tokens_do_not_depend_on_the_thread_count(threads):
    ours = normzoo.create("ghostbatchnorm", 72, virtual_batch_size=24)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
    x, g = torch.randn(1000, 72) * 3 + 1, torch.randn(1000, 72)

    def run() -> list[torch.Tensor]:
        xa = x.clone().requires_grad_()
        y = ours(xa)
        return [y, *torch.autograd.grad(y, [xa, ours.weight, ours.bias], g)]

    assert_same_bits_for_any_thread_count(run, threads)


def test_ghost_tokens_double_backward_and_partial_gradients(ghost_path):
    ours = normzoo.create("ghostbatchnorm", 64, virtual_batch_size=128)
    ref = normzoo.create("ghostbatchnorm", 64, virtual_batch_size=128, impl="reference")
    x = torch.randn(1024, 64) * 2 + 1
    assert ghost_path.ran(ours(x.clone().requires_grad_()))
    assert_double_backward_close(ours, x, ref, x)
    ours.weight.requires_grad_(False)
    xa = x.clone().requires_grad_()
    ours(xa).pow(2).sum().backward()
    xr = x.clone().requires_grad_()
    ref(xr).pow(2).sum().backward()
    assert ours.weight.grad is None
    torch.testing.assert_close(xa.grad, xr.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match=r"\(N, C\) tokens"):
        normzoo._native.kernels.ghost_rows_forward(torch.randn(4, 8, 2), None, None, 1e-5, 2, False)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("shape", "vbs"), [((8, 12, 5, 7), 2), ((7, 40, 33), 3)], ids=str)
def test_ghost_contiguous_is_batch_norm_per_virtual_batch_to_the_bit(shape, vbs, threads):
    """``nz_ghost_forward``/``_backward``: every virtual batch of a contiguous tensor in one
    call, each normalized by BatchNorm's own block code: ``y``, the statistics and ``dx`` are
    ``nz_bn_forward``/``_backward``'s on that virtual batch to the bit (a smaller last one
    too, any thread count); the parameters' gradients their sums over the virtual batches."""
    from normzoo._native import kernels

    torch.manual_seed(0)
    c = shape[1]
    x, dy = torch.randn(shape) * 3 + 1, torch.randn(shape)
    w, b = torch.rand(c) + 0.5, torch.randn(c)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y, stats, var = kernels.ghost_forward(x, w, b, 1e-5, vbs, True)
        dx, dw, db = kernels.ghost_backward(dy, x, w, stats, vbs, (True, True, True))
        parts = []
        for j, (xs, gs) in enumerate(zip(x.split(vbs), dy.split(vbs), strict=True)):
            ys, st, vs = kernels.batch_norm_forward_unchecked(xs.contiguous(), w, b, 1e-5, True)
            assert torch.equal(y[j * vbs : (j + 1) * vbs], ys)
            assert torch.equal(stats[j], st) and torch.equal(var[j], vs)
            g = kernels.batch_norm_backward(gs.contiguous(), xs.contiguous(), w, st[0], st[1],
                                            (True, True, True))  # fmt: skip
            assert torch.equal(dx[j * vbs : (j + 1) * vbs], g[0])
            parts.append(g)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(dw, sum(p[1].double() for p in parts).float(), rtol=1e-6, atol=0)
    torch.testing.assert_close(db, sum(p[2].double() for p in parts).float(), rtol=1e-6, atol=0)


@pytest.mark.parametrize(("n", "vbs"), [(1024, 32), (1000, 48)], ids=str)
def test_ghost_tokens_bfloat16_are_the_float32_kernels_rounded(n, vbs, ghost_path):
    """bfloat16 tokens on the ghost rows' bfloat16 build (``ghost_rows.h``): the float32
    kernel's math on the widened values, in the same order, so ``y`` and ``dx`` are the float32
    path's results rounded once (to the bit), and the statistics, the parameters' gradients
    and the running statistics are the float32 path's exactly."""
    torch.manual_seed(0)
    half = normzoo.create("ghostbatchnorm", 96, virtual_batch_size=vbs)
    with torch.no_grad():
        half.weight.uniform_(0.5, 1.5)
        half.bias.uniform_(-0.5, 0.5)
    full = normzoo.create("ghostbatchnorm", 96, virtual_batch_size=vbs)
    full.load_state_dict(half.state_dict())
    for step in range(2):
        x = (torch.randn(n, 96) * 3 + 2 + step).to(torch.bfloat16)
        g = torch.randn(n, 96).to(torch.bfloat16)
        xb, xf = x.clone().requires_grad_(), x.float().requires_grad_()
        yb, yf = half(xb), full(xf)
        assert yb.dtype == torch.bfloat16
        assert ghost_path.ran(yb)
        assert torch.equal(yb, yf.to(torch.bfloat16))
        got = torch.autograd.grad(yb, [xb, half.weight, half.bias], g)
        want = torch.autograd.grad(yf, [xf, full.weight, full.bias], g.float())
        assert got[0].dtype == torch.bfloat16 and torch.equal(got[0], want[0].to(torch.bfloat16))
        assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    for mine, theirs in zip(half.buffers(), full.buffers(), strict=True):
        assert torch.equal(mine, theirs)


def test_ghost_tokens_bfloat16_model_and_double_backward():
    """A Ghost BN cast to bfloat16 (its parameters too) keeps the token kernel, with its
    parameters widened for the call: the output is the float32-parameter module's; double
    backward (``create_graph``) goes through torch's batch-norm backward per virtual batch."""
    torch.manual_seed(0)
    full = normzoo.create("ghostbatchnorm", 64, virtual_batch_size=64)
    with torch.no_grad():
        full.weight.uniform_(0.5, 1.5)
    half = copy.deepcopy(full).to(torch.bfloat16)
    full.load_state_dict(half.state_dict())  # the bfloat16 values, float32 parameters
    x = (torch.randn(1024, 64) * 2 + 1).to(torch.bfloat16)
    xa = x.clone().requires_grad_()
    ya = half(xa)
    assert type(ya.grad_fn).__name__ == "_NativeGhostBatchNormBackward"
    assert torch.equal(ya, full(x))
    dy = torch.randn(1024, 64).to(torch.bfloat16)
    (dx,) = torch.autograd.grad(ya, xa, dy, create_graph=True)
    ref = normzoo.create("ghostbatchnorm", 64, virtual_batch_size=64, impl="reference")
    ref.load_state_dict(full.state_dict())
    xr = x.float().requires_grad_()
    (dxr,) = torch.autograd.grad(ref(xr), xr, dy.float(), create_graph=True)
    g = torch.randn(1024, 64)
    (ddx,) = torch.autograd.grad(dx.float(), xa, g)
    (ddxr,) = torch.autograd.grad(dxr, xr, g)
    assert ddx.dtype == torch.bfloat16
    torch.testing.assert_close(ddx.float(), ddxr, atol=0.05 * float(ddxr.abs().max()), rtol=0.05)
    with pytest.raises(ValueError, match="output gradient must match x"):
        normzoo._native.kernels.ghost_rows_backward(
            torch.randn(1024, 64), x, None, torch.zeros(16, 2, 64), 64, (True, False, False)
        )


@pytest.mark.skipif(not _native.ops_available(), reason="no operator library here")
@pytest.mark.parametrize("momentum", [0.1, None], ids=str)
def test_ghost_operator_blends_the_running_statistics_as_sequential_updates(momentum):
    """``normzoo::ghost_batch_norm_train``'s running statistics are one BN update per virtual
    batch, in order (the last one smaller; ``momentum=None``: the cumulative average from the
    count given), folded into one step: known answer from the per-virtual-batch updates in
    float64, on each of its kernels."""
    op = torch.ops.normzoo.ghost_batch_norm_train
    cl = torch.channels_last
    for shape, fmt, kernels, vbs in (
        ((70, 24), torch.contiguous_format, 1, 16),  # rows
        ((10, 24, 3, 2), torch.contiguous_format, 0, 4),  # blocks
        ((10, 24, 3, 2), cl, 1, 4),  # rows of channels_last input
        ((10, 24, 3, 2), cl, 2, 4),  # BatchNorm's channels_last kernels per virtual batch
    ):
        x = (torch.randn(shape) * 3 + 1).contiguous(memory_format=fmt)
        rm, rv = torch.randn(24), torch.rand(24) + 0.5
        want_m, want_v = rm.double(), rv.double()
        tracked = 5
        for j, chunk in enumerate(x.double().split(vbs)):
            dims = [0, *range(2, chunk.dim())]
            f = momentum if momentum is not None else 1.0 / (tracked + j + 1)
            want_m = (1 - f) * want_m + f * chunk.mean(dims)
            want_v = (1 - f) * want_v + f * chunk.var(dims, correction=1)
        versions = rm._version, rv._version
        op(x, None, None, rm, rv, vbs, 1e-5, momentum, tracked, kernels, 4)
        assert rm._version > versions[0] and rv._version > versions[1]  # in-place ops
        torch.testing.assert_close(rm.double(), want_m, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(rv.double(), want_v, atol=1e-6, rtol=1e-6)


@pytest.mark.skipif(not _native.ops_available(), reason="no operator library here")
def test_ghost_operator_refuses_bad_input_before_any_change():
    """Every refusal names the problem and comes before the kernels run: the running
    statistics stay as they were."""
    op = torch.ops.normzoo.ghost_batch_norm_train
    x, w = torch.randn(64, 8), torch.ones(8)
    x4, cl = torch.randn(8, 8, 4, 4), torch.channels_last
    rm, rv = torch.zeros(8), torch.ones(8)
    bad = [
        ((x.double(), w, None, rm, rv, 8, 1e-5, 0.1, 0, 1, 4), "float32 or bfloat16"),
        ((x, w.double(), None, rm, rv, 8, 1e-5, 0.1, 0, 1, 4), r"float32 CPU \(8,\)"),
        ((x, w, None, rm[:4], rv, 8, 1e-5, 0.1, 0, 1, 4), r"float32 CPU \(8,\)"),
        ((x, w, None, rm, None, 8, 1e-5, 0.1, 0, 1, 4), "both running statistics"),
        ((x, w, None, rm, rv, 0, 1e-5, 0.1, 0, 1, 4), "must be positive, got 0"),
        ((x[:9], w, None, rm, rv, 8, 1e-5, 0.1, 0, 1, 4), "more than 1 value per channel"),
        ((x4, w, None, rm, rv, 4, 1e-5, 0.1, 0, 1, 4), "contiguous or channels_last"),
        ((x, w, None, rm, rv, 8, 1e-5, None, -1, 1, 4), "tracked must be >= 0"),
        ((x, w, None, rm, rv, 8, 1e-5, 0.1, 0, 3, 4), "kernels must be 0"),
        ((x, w, None, rm, rv, 8, 1e-5, 0.1, 0, 2, 4), "channels_last input for kernels=2"),
        ((x4.to(memory_format=cl), w, None, rm, rv, 4, 1e-5, 0.1, 0, 2, 0), "max_blocks"),
    ]
    for args, message in bad:
        with pytest.raises(RuntimeError, match=message):
            op(*args)
        assert torch.equal(rm, torch.zeros(8)) and torch.equal(rv, torch.ones(8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("name", "node"),
    [*TOKEN_NORMS, ("rmsnorm", "_RMSTokensBackward"), ("frn", "_FRNTokensBackward")],
)
def test_half_precision_tokens_run_the_kernels_in_float32(name, node, dtype):
    """float16: the input converted once, the float32 kernels, the output converted back (the
    float32 result rounded, gradients through both conversions: to the bit). bfloat16: the
    kernels' bfloat16 build, the same float32 math on the widened values with each output
    rounded once; its sums may add in another order than the float32 build's, so an output
    may round to the neighbouring bfloat16 (at most one step)."""
    kwargs = {"channels_last": True} if name == "rmsnorm" else {}
    ours = normzoo.create(name, 64, **kwargs)
    x = (torch.randn(1024, 64) * 2 + 1).to(dtype).requires_grad_()
    y = ours(x)
    assert y.dtype == dtype
    nodes, todo = set(), [y.grad_fn]
    while todo:  # the graph holds the kernel's node behind the dtype conversion
        fn = todo.pop()
        if fn is not None and type(fn).__name__ not in nodes:
            nodes.add(type(fn).__name__)
            todo.extend(f for f, _ in fn.next_functions)
    assert node in nodes
    x32 = x.detach().float().requires_grad_()
    want = ours(x32)
    exact = {"atol": 0, "rtol": 0} if dtype == torch.float16 else {"atol": 1e-6, "rtol": 2**-7}
    torch.testing.assert_close(y.float(), want.to(dtype).float(), **exact)
    g = torch.randn(1024, 64)
    (dx,) = torch.autograd.grad(y, x, g.to(dtype))
    (dx32,) = torch.autograd.grad(want, x32, g.to(dtype).float())
    assert dx.dtype == dtype
    torch.testing.assert_close(dx.float(), dx32.to(dtype).float(), **exact)


# -- FrozenBatchNorm: zoo.c's per-channel map behind torch.ops.normzoo.frozen_batch_norm -----
def _frozen_state(c: int, affine: bool) -> tuple[torch.Tensor, ...]:
    mean, var = torch.randn(c), torch.rand(c) + 0.5
    w, b = (torch.randn(c), torch.randn(c)) if affine else (None, None)
    return mean, var, w, b


def _frozen_reference(x, mean, var, w, b, eps, relu):
    """Inference BN in float64: (x - mean) / sqrt(var + eps) w + b, then the ReLU."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = (x.double() - mean.double().view(shape)) / (var.double().view(shape) + eps).sqrt()
    if w is not None:
        y = y * w.double().view(shape) + b.double().view(shape)
    return torch.relu(y) if relu else y


FROZEN_SHAPES = [
    (4, 8, 5, 7),
    (3, 21, 9, 11),
    (2, 70, 4, 3),
    (5, 6, 33),
    (3, 12, 3, 4, 5),
    (300, 37),  # tokens: one position per row, run as rows of channels
]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(
    ("layout", "shape"),
    [("contiguous", s) for s in FROZEN_SHAPES]
    + [("channels_last", s) for s in FROZEN_SHAPES if len(s) > 3],  # 4-d and 5-d only
    ids=str,
)
def test_ops_frozen_batch_norm_equals_float64_reference(layout, shape, affine, relu):
    """Forward and input gradient of the operator (both layouts, odd channel counts and
    lengths, with and without the affine and the ReLU) against float64 math; the layout is
    kept, and the only saved tensor beyond the statistics is the output (with the ReLU)."""
    assert _native.load_ops()
    mean, var, w, b = _frozen_state(shape[1], affine)
    x = torch.randn(shape) * 2
    g = torch.randn(shape)
    if layout == "channels_last":
        x, g = _cl(x), _cl(g)
    x.requires_grad_()
    y = torch.ops.normzoo.frozen_batch_norm(x, mean, var, w, b, 1e-3, relu)
    (dx,) = torch.autograd.grad(y, x, g)
    xd = x.detach().double().requires_grad_()
    ref = _frozen_reference(xd, mean, var, w, b, 1e-3, relu)
    (dref,) = torch.autograd.grad(ref, xd, g.double())
    torch.testing.assert_close(y.double(), ref, **TOL)
    torch.testing.assert_close(dx.double(), dref, **TOL)
    assert y.stride() == x.stride() and dx.stride() == x.stride()
    assert type(y.grad_fn).__name__ == "CppFunction"


@pytest.mark.parametrize("threads", [2, 3])
def test_ops_frozen_batch_norm_does_not_depend_on_the_thread_count(threads):
    assert _native.load_ops()
    mean, var, w, b = _frozen_state(24, True)
    x, g = torch.randn(6, 24, 13, 11, requires_grad=True), torch.randn(6, 24, 13, 11)

    def run():
        y = torch.ops.normzoo.frozen_batch_norm(x, mean, var, w, b, 1e-5, True)
        return y, torch.autograd.grad(y, x, g)[0]

    assert_same_bits_for_any_thread_count(run, threads)


def test_ops_frozen_batch_norm_refuses_bad_statistics_and_double_backward_is_exact():
    assert _native.load_ops()
    mean, var, w, b = _frozen_state(8, True)
    x = torch.randn(4, 8, 5, 5)
    with pytest.raises(RuntimeError, match=r"expected contiguous float32 CPU \(8,\) parameters"):
        torch.ops.normzoo.frozen_batch_norm(x, mean[:4], var, w, b, 1e-5, False)
    with pytest.raises(RuntimeError, match="expected a float32 CPU input"):
        torch.ops.normzoo.frozen_batch_norm(x.double(), mean, var, w, b, 1e-5, False)
    xd = x.double().requires_grad_()
    for relu in (False, True):
        xr = x.clone().requires_grad_()
        y = torch.ops.normzoo.frozen_batch_norm(xr, mean, var, w, b, 1e-5, relu)
        (gx,) = torch.autograd.grad(y.pow(3).sum(), xr, create_graph=True)
        (second,) = torch.autograd.grad(gx.pow(2).sum(), xr)
        ref = _frozen_reference(xd, mean, var, w, b, 1e-5, relu)
        (gref,) = torch.autograd.grad(ref.pow(3).sum(), xd, create_graph=True)
        (sref,) = torch.autograd.grad(gref.pow(2).sum(), xd)
        torch.testing.assert_close(gx.double(), gref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(second.double(), sref, rtol=1e-4, atol=1e-3)


def test_frozen_batchnorm_module_takes_the_kernels_from_their_threshold():
    """From ``NATIVE_MIN_NUMEL`` elements the module runs the operator's C++ node; below it,
    torch's inference batch_norm (whose fixed cost is lower there)."""
    from normzoo.norms import frozen_batch

    assert _native.load_ops()
    layer = normzoo.create("frozenbn", 16)
    n = frozen_batch.NATIVE_MIN_NUMEL // (16 * 64)
    big = torch.randn(n, 16, 8, 8, requires_grad=True)
    small = torch.randn(n - 1, 16, 8, 8, requires_grad=True)
    assert type(layer(big).grad_fn).__name__ == "CppFunction"
    assert type(layer(small).grad_fn).__name__ != "CppFunction"
