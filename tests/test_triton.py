"""The Triton path (normzoo.norms._triton) where no GPU is: the import stays light, the
dispatch rule, CPU tensors never served, the Python orchestration end to end with the
kernels' contracts emulated in torch (tests/triton_emulation.py: runs everywhere, CI too),
and the kernels' own arithmetic under Triton's interpreter where triton is installed (the test
extra installs it on Linux x86-64, CI included; compiled, on a GPU, tests/test_triton_gpu.py
checks them)."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from normzoo.norms import _triton

ROOT = Path(__file__).resolve().parent.parent


def test_import_normzoo_does_not_import_triton():
    code = "import sys, normzoo; normzoo.create('bn', 4); print('triton' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("kind", "shape", "contiguous", "groups", "expected"),
    [
        ("batch", (256, 64, 64, 64), True, 1, True),
        ("batch", (256, 64, 4096), True, 1, True),
        ("batch", (256, 64, 64, 64), False, 1, False),  # torch's channels_last BN is faster
        ("batch", (65536, 1024), True, 1, False),  # (N, C): the folded path lost
        ("group", (256, 64, 64, 64), True, 32, True),  # one pass: 2 x 4096 per group
        ("group", (256, 64, 64, 64), True, 64, True),  # instance norm
        ("group", (256, 64, 64, 64), True, 1, False),  # layer norm over (C, H, W): two-phase
        ("group", (256, 64, 64, 64), False, 1, True),  # channels_last: torch copies to NCHW
        ("group", (65536, 1024), True, 32, True),  # (N, C) tokens: torch's read 0.07
        ("group", (65536, 1000), True, 8, False),  # 1000 channels: scalar loads
        # 196 positions (contiguous) or 40 channels (channels_last), not multiples of 16:
        # compiled with scalar loads and 2-3x the registers, not measured
        ("batch", (1024, 512, 14, 14), True, 1, False),
        ("batch", (512, 512, 28, 28), True, 1, True),  # 784 = 49 x 16
        ("batch", (256, 64, 4100), True, 1, False),
        ("group", (2048, 256, 14, 14), True, 32, False),
        ("group", (2048, 256, 14, 14), False, 32, True),  # channels_last: 256 channels
        ("group", (256, 40, 64, 64), False, 8, False),
        ("group", (256, 48, 64, 64), False, 8, True),
        ("token", (65536, 1024), True, 1, False),
        ("rms_token", (65536, 1024), True, 1, False),  # float32: not faster per call
        # the zoo (twentieth session's A/B, float32): contiguous, some on channels_last
        ("frn", (256, 64, 64, 64), True, 64, True),
        ("frn", (256, 64, 64, 64), False, 64, True),
        ("s0", (256, 64, 64, 64), True, 32, True),
        ("s0", (256, 64, 64, 64), False, 32, False),  # not measured
        # contiguous FRN and EvoNorm-S0 were measured on one-pass groups: two phases not
        ("frn", (16, 64, 128, 128), True, 64, False),  # 16384 positions a channel
        ("s0", (256, 64, 64, 64), True, 2, False),  # 131072 values a group
        ("rms", (256, 64, 64, 64), True, 1, True),
        ("rms", (256, 64, 64, 64), False, 1, True),
        ("renorm", (256, 64, 64, 64), True, 1, True),
        ("renorm", (256, 64, 64, 64), False, 1, False),  # its host time outweighed the kernels
        ("switchable", (256, 64, 64, 64), True, 1, True),
        ("switchable", (256, 64, 64, 64), False, 1, False),  # not measured
        ("b0", (256, 64, 64, 64), True, 1, True),
        ("b0", (256, 64, 64, 64), False, 1, True),
        ("ghost", (256, 64, 64, 64), True, 1, True),
        ("ghost", (256, 64, 64, 64), False, 1, True),
        ("ghost", (1024, 512, 14, 14), True, 1, False),  # 196 positions: scalar loads
        ("ghost", (256, 40, 64, 64), False, 1, False),  # 40 channels, channels_last
        ("frozen", (256, 64, 64, 64), True, 1, False),  # its eager path's host time won
    ],
)
def test_the_measured_rule(kind, shape, contiguous, groups, expected, monkeypatch):
    monkeypatch.delenv("NORMZOO_TRITON", raising=False)
    assert _triton.takes(kind, shape, contiguous, groups) is expected
    monkeypatch.setenv("NORMZOO_TRITON", "all")  # every supported input
    assert _triton.takes(kind, shape, contiguous, groups) is True


@pytest.mark.parametrize(
    ("kind", "contiguous", "dtype", "expected"),
    [
        ("frn", True, torch.bfloat16, True),
        ("ghost", True, torch.bfloat16, True),
        ("switchable", True, torch.bfloat16, False),  # not measured in bfloat16
        ("rms", False, torch.bfloat16, False),  # channels_last bfloat16: not measured
        ("b0", True, torch.float16, False),  # float16: not measured
        ("rms", True, torch.float64, False),
    ],
)
def test_the_zoo_rule_reads_the_dtype(kind, contiguous, dtype, expected, monkeypatch):
    monkeypatch.delenv("NORMZOO_TRITON", raising=False)
    shape, groups = (256, 64, 64, 64), 64  # (FRN: a group per channel)
    assert _triton.takes(kind, shape, contiguous, groups, dtype) is expected
    assert _triton.takes(kind, shape, contiguous, groups, torch.float32)  # measured in float32


def test_the_token_rule_reads_the_kind_and_dtype(monkeypatch):
    """Over (65536, 1024) tokens (twenty-fourth session's H200 data): RMSNorm in bfloat16 takes
    the kernels (4.1x faster on the GPU, faster per call with their host time), in float32
    not (faster on the GPU, not per call); layer norm keeps torch's in both; group norm takes
    them in both (torch's read 0.07 of the copy ceiling)."""
    monkeypatch.delenv("NORMZOO_TRITON", raising=False)
    shape = (65536, 1024)
    assert _triton.takes("rms_token", shape, True, dtype=torch.bfloat16)
    assert not _triton.takes("rms_token", (65536, 1000), True, dtype=torch.bfloat16)
    assert not _triton.takes("rms_token", (64, 16384), True, dtype=torch.bfloat16)  # too wide
    for dtype in (torch.float32, torch.float16):
        assert not _triton.takes("rms_token", shape, True, dtype=dtype)
    for dtype in (torch.float32, torch.bfloat16):
        assert not _triton.takes("token", shape, True, dtype=dtype)
        assert _triton.takes("group", shape, True, 32, dtype)


def test_tokens_wider_than_one_program_keep_torch(monkeypatch):
    monkeypatch.setenv("NORMZOO_TRITON", "all")
    assert _triton.takes("token", (64, 8192), True)
    assert not _triton.takes("token", (64, 8193), True)  # 16384 padded: too many registers
    # group norm of (N, C): each row's groups padded to powers of two, in one program
    assert _triton.takes("group", (64, 8192), True, 32)
    assert _triton.takes("group", (64, 6144), True, 3)  # padded to 4 groups of 2048
    assert not _triton.takes("group", (64, 6147), True, 3)  # 4 x 4096 padded: too many


def test_cpu_tensors_and_small_inputs_are_never_served():
    x = torch.randn(4, 8, 16, 16)
    for check in (_triton.serves, _triton.serves_batch, _triton.serves_tokens):
        assert not check(x)
    assert not _triton.serves_group(x, 2)


def test_the_threshold_is_where_the_measurement_won():
    assert _triton.MIN_NUMEL == 256 * 64 * 64 * 64  # won there; lost at 64 * 64 * 64 * 64
    assert _triton.MIN_NUMEL_ALL < _triton.MIN_NUMEL


def test_orchestration_with_emulated_kernels(monkeypatch, capsys):
    """Every case of tests/triton_interpreter_check.py through _triton's functions (plans,
    partial layouts, merges, backward coefficients, running-statistics arguments, autograd)
    with torch stand-ins for the kernels."""
    import triton_emulation
    import triton_interpreter_check

    monkeypatch.setattr(_triton, "_kernels", triton_emulation.Kernels)
    monkeypatch.setattr(_triton, "_target_programs", lambda x: 64)
    monkeypatch.setattr(_triton, "TILE", _triton.TILE)
    monkeypatch.setattr(_triton, "TILE_ROWS_BYTES", _triton.TILE_ROWS_BYTES)
    monkeypatch.setattr(_triton, "_proven", set())
    torch.manual_seed(0)
    fails = triton_interpreter_check.check()
    out = capsys.readouterr().out
    assert fails == 0, out
    assert "cases 300 fails 0" in out
    assert _triton._disabled is None  # no case fell back to torch's kernels


def test_batch_norm_running_statistics_through_the_kernel_arguments(monkeypatch):
    """``running=(mean, var, factor)`` reaches the statistics kernel, which blends them as
    Tensor.lerp_ with the unbiased variance (emulated): torch's batch_norm's update."""
    import triton_emulation

    monkeypatch.setattr(_triton, "_kernels", triton_emulation.Kernels)
    x = torch.randn(6, 5, 7, 3) * 2 + 1
    rm, rv = torch.rand(5), torch.rand(5) + 0.5
    ref_m, ref_v = rm.clone(), rv.clone()
    y, mean, var = _triton.batch_norm(x, None, None, 1e-5, running=(rm, rv, 0.3))
    ref = torch.nn.functional.batch_norm(x, ref_m, ref_v, None, None, True, 0.3, 1e-5)
    torch.testing.assert_close(y, ref)
    var_ref, mean_ref = torch.var_mean(x, (0, 2, 3), correction=0)
    torch.testing.assert_close(mean, mean_ref)
    torch.testing.assert_close(var, var_ref)
    torch.testing.assert_close(rm, ref_m)
    torch.testing.assert_close(rv, ref_v)


@pytest.fixture
def emulated(monkeypatch):
    """The emulated kernels, a fresh first-call state, and the kernels' state restored."""
    import triton_emulation

    class Kernels(triton_emulation.Kernels):  # a copy each test may break
        pass

    monkeypatch.setattr(_triton, "_kernels", lambda: Kernels)
    monkeypatch.setattr(_triton, "_proven", set())
    monkeypatch.setattr(_triton, "_disabled", None)
    return Kernels


def _broken(*args, **kwargs):
    raise RuntimeError("PTXAS error: this GPU is not supported")


def test_a_failing_first_call_falls_back_to_torch_once(emulated, monkeypatch):
    """The statistics merge cannot compile: one warning, the result from torch's kernels (the
    running statistics blended once, as torch's batch norm does), the kernels off after."""
    import triton_emulation

    monkeypatch.setattr(emulated, "_finalize", triton_emulation._Kernel(_broken))
    x = torch.randn(6, 5, 7, 3) * 2 + 1
    rm, rv = torch.rand(5), torch.rand(5) + 0.5
    ref_m, ref_v = rm.clone(), rv.clone()
    with pytest.warns(RuntimeWarning, match="PTXAS error"):
        y, mean, var = _triton.batch_norm(x, None, None, 1e-5, True, running=(rm, rv, 0.3))
    ref = torch.nn.functional.batch_norm(x, ref_m, ref_v, None, None, True, 0.3, 1e-5)
    torch.testing.assert_close(y, torch.relu(ref))
    torch.testing.assert_close((rm, rv), (ref_m, ref_v))
    torch.testing.assert_close((mean, var), (x.mean((0, 2, 3)), x.var((0, 2, 3), correction=0)))
    assert not _triton.available() and "PTXAS error" in _triton._disabled


def test_a_failing_first_backward_falls_back_to_torch(emulated, monkeypatch):
    import triton_emulation

    monkeypatch.setattr(emulated, "_group_bwd", triton_emulation._Kernel(_broken))
    x = torch.randn(4, 6, 5, 7, requires_grad=True)
    w = torch.rand(6, requires_grad=True)
    b = torch.rand(6, requires_grad=True)
    y = _triton.group_norm(x, 2, w, b, 1e-5)[0]
    g = torch.randn_like(y)
    with pytest.warns(RuntimeWarning, match="first call"):
        y.backward(g)
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    torch.nn.functional.group_norm(x2, 2, w2, b2, 1e-5).backward(g)
    torch.testing.assert_close((x.grad, w.grad, b.grad), (x2.grad, w2.grad, b2.grad))
    assert not _triton.available()


def test_a_later_failure_is_an_error(emulated, monkeypatch):
    """Once a kind of call has run, its failures are real errors: they propagate."""
    import triton_emulation

    x = torch.randn(4, 6, 5, 7)
    _triton.group_norm(x, 2, None, None, 1e-5)
    monkeypatch.setattr(emulated, "_group_fwd", triton_emulation._Kernel(_broken))
    with pytest.raises(RuntimeError, match="PTXAS"):
        _triton.group_norm(x, 2, None, None, 1e-5)
    assert _triton._disabled is None
    with pytest.warns(RuntimeWarning):  # another kind of call: its first, so it falls back
        _triton.group_norm(x[:2], 2, None, None, 1e-5)


def _interpreter_usable() -> str | None:
    """Why the interpreter check cannot run here, or None."""
    try:
        import triton  # noqa: F401
    except ImportError:  # (the dev extra installs it on Linux x86-64, as CI runs)
        return "triton is not installed (it has no wheel for this platform)"
    return None


COEF_CHECK = """
import itertools, sys, torch
sys.path[:0] = [{tests!r}]
import triton_emulation as E, triton_interpreter_check as I
from normzoo.norms import _triton as T

I.scalar_index_for_numpy_2_4()
torch.manual_seed(0)
k = T._kernels()
n, c, nk, cpg = 3, 6, 5, 2
part = torch.randn(4, n, c, nk) * 3 + 1
w, rstd = torch.rand(c) + 0.5, torch.rand(n * c // cpg) + 0.5
r, d = torch.rand(c) + 0.5, torch.randn(c)
worst = 0.0
for has_w, extra, no_mean, swish in itertools.product([False, True], repeat=4):
    if swish and not extra:
        continue
    outs = []
    for kernel in (k._group_grad_coef, E.Kernels._group_grad_coef):
        o = torch.full((2 * n * c // cpg + 3 * c,), float("nan"))
        a, b = o[: 2 * n * c // cpg].view(2, -1).unbind(0)
        db, dw, dp = o[2 * n * c // cpg :].view(3, c).unbind(0)
        kernel[(n * c // cpg + c,)](part, w, rstd, db, dw, dp, a, b, n, c, nk, cpg, 0.1,
            HAS_W=has_w, EXTRA=extra, NO_MEAN=no_mean, SWISH=swish, KB=16, num_warps=4)
        outs.append(o if extra else o[: -c])
    err = float((outs[0] - outs[1]).abs().max() / outs[1].abs().max())
    worst = max(worst, err if err == err else float("inf"))  # (NaN: a value not written)
for has_w, renorm in itertools.product([False, True], repeat=2):
    outs = []
    for kernel in (k._bn_grad_coef, E.Kernels._bn_grad_coef):
        o = torch.full((4, c), float("nan"))
        kernel[(c,)](part[:2], w, r, d, *o.unbind(0), n, c, nk, 0.1, HAS_W=has_w,
                     RENORM=renorm, KB=8, num_warps=4)
        outs.append(o)
    err = float((outs[0] - outs[1]).abs().max() / outs[1].abs().max())
    worst = max(worst, err if err == err else float("inf"))
print("worst", worst)
"""


@pytest.mark.skipif(_interpreter_usable() is not None, reason=str(_interpreter_usable()))
def test_backward_coefficient_kernels_give_the_formulas():
    """The backward's coefficient kernels (``_group_grad_coef``, ``_bn_grad_coef``) under
    Triton's interpreter against their torch statements (``tests/triton_emulation.py``) on
    partial sums with a mean far from 0, every flag: each set's ``a`` and ``b`` (no mean
    term for RMSNorm and FRN; EvoNorm-S0's correction by the set's mean deviation, which
    inputs near 0 leave at ~0 and so the module checks cannot see), each channel's parameter
    gradients (Batch Renorm's ``r sum(dy x_hat) + d sum(dy)``); tiles smaller than a set
    and a channel's partials (several loop iterations, masked tails)."""
    code = COEF_CHECK.format(tests=str(ROOT / "tests"))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.split()[-1]) < 1e-6, out.stdout


@pytest.mark.timeout(900)
@pytest.mark.skipif(_interpreter_usable() is not None, reason=str(_interpreter_usable()))
def test_kernels_under_the_interpreter():
    """tests/triton_interpreter_check.py in two processes at once (the interpreter runs on
    one core): every case once, none failing."""
    assert _interpreter_check_in_two_shards() > 200  # both shards ran their share


def _interpreter_check_in_two_shards(*args: str, expect: str = "") -> int:
    """tests/triton_interpreter_check.py with ``args``, as two shards at once: the cases run,
    after asserting that each shard passed every one (and printed ``expect``)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    script = str(ROOT / "tests" / "triton_interpreter_check.py")
    shards = [
        subprocess.Popen(
            [sys.executable, script, *args, "--shard", f"{i}/2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    total = 0
    for shard in shards:
        stdout, stderr = shard.communicate(timeout=600)
        assert shard.returncode == 0, stdout[-3000:] + stderr[-3000:]
        found = re.search(r"cases (\d+) fails 0", stdout)
        assert found and expect in stdout, stdout[-3000:]
        total += int(found.group(1))
    return total


#: Modules and inputs that the kernels serve under NORMZOO_TRITON=all (the emulated kernels
#: on CPU tensors here): each module's call of them, its arguments and its output.
MODULE_CASES = [
    ("bn", {}, (6, 8, 5, 7)),
    ("gn", {"num_groups": 2}, (4, 8, 5, 7)),
    ("gn", {"num_groups": 4}, (9, 12)),  # (N, C) tokens
    ("ln", {}, (4, 8, 5, 7)),
    ("in", {"track_running_stats": True}, (4, 8, 5, 7)),
    ("ln", {"channels_last": True}, (4, 9, 16)),
    ("rms", {"channels_last": True}, (4, 9, 16)),
    ("rms", {}, (4, 8, 5, 7)),
    ("frn", {}, (4, 8, 5, 7)),
    ("evonorms0", {"num_groups": 4}, (4, 8, 5, 7)),
    # limits that clip r and d from the first step (running statistics 0 and 1, x's ~1 and 2)
    (
        "batchrenorm",
        {"r_max": 1.5, "d_max": 0.5, "warmup_steps": 0, "r_max_steps": 0, "d_max_steps": 0},
        (6, 8, 5, 7),
    ),
    ("switchablenorm", {}, (4, 8, 5, 7)),
    ("evonormb0", {}, (4, 8, 5, 7)),
    ("ghostbatchnorm", {"virtual_batch_size": 3}, (7, 8, 5, 7)),  # a smaller last one
    ("frozenbatchnorm", {}, (6, 8, 5, 7)),
    ("frozenbatchnorm", {"activation": "relu"}, (6, 8, 5, 7)),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "shape", "channels_last"),
    [(*case, cl) for case in MODULE_CASES for cl in (False, True) if not cl or len(case[2]) == 4],
    ids=str,
)
def test_modules_reach_the_kernels(name, kwargs, shape, channels_last, emulated, monkeypatch):
    """Each module's Triton call (arguments in the kernels' order, parameters, eps, running
    statistics) gives its reference math's outputs, gradients and buffers; the kernels ran
    (FRN and EvoNorm-S0 only on contiguous input: channels_last keeps their other paths)."""
    import normzoo

    monkeypatch.setenv("NORMZOO_TRITON", "all")
    monkeypatch.setattr(_triton, "serves", lambda x, *params: True)  # CPU tensors, any size
    monkeypatch.setenv("NORMZOO_NATIVE", "0")  # as on CUDA: the CPU's kernels never come first
    calls = []
    for module, entry_name in _triton.entry_points():  # every forward's kernels launch there
        entry = getattr(module, entry_name)
        monkeypatch.setattr(module, entry_name, lambda *a, f=entry: calls.append(1) or f(*a))
    c = shape[-1] if kwargs.get("channels_last") else shape[1]
    ours = normzoo.create(name, c, **kwargs)
    ref = normzoo.create(name, c, impl="reference", **kwargs)
    with torch.no_grad():  # the same random parameters and (positive) floating buffers
        tensors = [[*m.parameters(), *m.buffers()] for m in (ours, ref)]
        for p, q in zip(*tensors, strict=True):
            if p.is_floating_point():
                p.copy_(torch.rand_like(p) + 0.5)
                q.copy_(p)
    x = torch.randn(shape) * 2 + 1
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    g = torch.randn(shape)
    outs = []
    for m in (ours, ref):
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(g)
        outs.append((y, xi.grad, *(p.grad for p in m.parameters())))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.state_dict(), ref.state_dict())
    assert calls  # every module, channels_last too, reaches the kernels
    if calls and not channels_last:
        assert outs[0][0].is_contiguous()
    if calls and channels_last:
        assert outs[0][0].is_contiguous(memory_format=torch.channels_last)


def test_a_failing_first_zoo_call_falls_back_to_the_reference_math(emulated, monkeypatch):
    """FRN's kernels cannot compile: one warning, then its reference math (forward, and the
    gradients of x, the parameters and tau through the fallback)."""
    import triton_emulation

    from normzoo import functional

    monkeypatch.setattr(emulated, "_group_fwd", triton_emulation._Kernel(_broken))
    x = torch.randn(4, 6, 5, 7, requires_grad=True)
    w, b, tau = (torch.rand(6, requires_grad=True) for _ in range(3))
    with pytest.warns(RuntimeWarning, match="first call"):
        y = _triton.filter_response_norm(x, w, b, tau, 1e-6)
    g = torch.randn_like(y)
    y.backward(g)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b, tau)]
    functional.filter_response_norm(*leaves, eps=1e-6).backward(g)
    torch.testing.assert_close(y, functional.filter_response_norm(x, w, b, tau, eps=1e-6))
    for ours, ref in zip((x, w, b, tau), leaves, strict=True):
        torch.testing.assert_close(ours.grad, ref.grad)
    assert not _triton.available()


@pytest.mark.parametrize("norm", ["renorm", "switchable", "b0", "ghost"])
def test_a_failing_first_zoo_forward_leaves_the_running_statistics_to_the_fallback(
    norm, emulated, monkeypatch
):
    """The map kernel cannot compile: the statistics kernels and the coefficient kernel
    (which updates the running statistics) have run; ``_call`` restores the running
    statistics from its first call's copy, so the fallback's result and its one update are
    the reference's (not updated twice)."""
    import triton_emulation

    from normzoo import functional
    from normzoo.norms import _triton_zoo

    broken = "_b0_apply" if norm == "b0" else "_apply"
    monkeypatch.setattr(emulated, broken, triton_emulation._Kernel(_broken))
    x = torch.randn(6, 5, 7, 3) * 2 + 1
    w, b = torch.rand(5) + 0.5, torch.rand(5)
    rm, rv = torch.randn(5), torch.rand(5) + 0.5
    with torch.no_grad():
        if norm == "renorm":
            ref = functional.batch_renorm(
                x, rm, rv, w, b, training=True, r_max=1.5, d_max=0.5, momentum=0.3
            )
        elif norm == "switchable":
            mw, vw = torch.randn(3), torch.randn(3)
            ref = functional.switchable_norm(
                x, mw, vw, rm, rv, w, b, training=True, momentum=0.3, eps=1e-5
            )
        elif norm == "b0":
            v = torch.randn(5) * 0.5
            ref = functional.evonorm_b0(x, v, rv, w, b, training=True, momentum=0.3)
        else:
            ref = functional.ghost_batch_norm(
                x, rm, rv, w, b, virtual_batch_size=4, training=True, momentum=None,
                num_batches_tracked=3,
            )  # fmt: skip
    with pytest.warns(RuntimeWarning, match="first call"):
        if norm == "renorm":
            y = _triton_zoo.batch_renorm(x, w, b, (rm, rv, 0.3), (1.5, 0.5), 1e-5)
        elif norm == "switchable":
            state = _triton_zoo.SwitchableState(rm, rv, True, 0.3, 1e-5, True)
            y = _triton_zoo.switchable_norm(x, mw, vw, w, b, state)
        elif norm == "b0":
            y = _triton_zoo.evonorm_b0(x, v, w, b, _triton_zoo.B0State(rv, True, 0.3, 1e-5, True))
        else:
            y = _triton_zoo.ghost_batch_norm(x, w, b, 4, 1e-5, (rm, rv, None, 3))[0]
    got = (y, rv) if norm == "b0" else (y, rm, rv)
    torch.testing.assert_close(got, tuple(ref))
    assert not _triton.available()


def test_launch_counts_script():
    """scripts/triton_launches.py counts each Triton path's launches on the CPU: a one-pass
    norm's forward is one Triton launch and no torch op; batch norm's three launches and one
    op (the module's running-average counter); the backward materializes no gradients of the
    statistics outputs; every module listed."""
    script = str(ROOT / "scripts" / "triton_launches.py")
    jit = _compiler_usable() is None  # Triton's launch path too (kernels compiled, no GPU)
    out = subprocess.run(
        [sys.executable, script, "--time", "--repeats", "1", *(["--jit"] if jit else [])],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=300, env=_compile_env(),
    ).stdout  # fmt: skip
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert rows["gn"][:3] == ["1", "+", "0"] and rows["frn"][:3] == ["1", "+", "0"]
    assert rows["bn"][:3] == ["3", "+", "1"]
    # fwd+bwd: the backward's seed and the partial sums' reduction (batch norm and Batch
    # Renorm: the sums and coefficients in a kernel, so the seed and the counter only), no
    # zero-filled gradients of the statistics outputs
    assert rows["gn"][3:6] == ["2", "+", "2"] and rows["bn"][3:6] == ["6", "+", "2"]
    assert rows["batchrenorm"][3:6] == ["7", "+", "2"]
    assert rows["ghostbatchnorm"][5] == "4"
    # the zoo's two-phase paths: their small ops in coefficient kernels (few torch ops)
    zoo = ("batchrenorm", "evonormb0", "ghostbatchnorm", "switchablenorm")
    assert all(int(rows[name][2]) <= 1 for name in zoo)
    # channels_last group norms: the two-phase kernels and their coefficient kernel, the
    # backward's seed the only torch op (no sums, products or divisions of the partials)
    assert rows["gn_cl"][3:6] == ["6", "+", "1"] and rows["evonorms0_cl"][3:6] == ["6", "+", "1"]
    assert len(rows) == 14
    assert all(len(row) == (14 if jit else 8) for row in rows.values())
    assert all(float(row[6]) > 0 and float(row[7]) > 0 for row in rows.values())
    if jit:  # Triton's binder and cache lookup cost host time on top of the no-op kernels
        assert sum(float(row[8]) for row in rows.values()) > sum(
            float(row[6]) for row in rows.values()
        )
        # normzoo's direct launches (timed, not compared: the A/B is the script's output)
        assert all(float(row[11]) > 0 and float(row[12]) > 0 for row in rows.values())


def test_a_failing_first_map_after_the_statistics_blend_falls_back_blending_once(
    emulated, monkeypatch
):
    """Batch norm's statistics kernel blends the running statistics, then its map kernel
    fails on the first call: they are restored, and the fallback (torch's batch norm) blends
    them once."""
    import triton_emulation

    monkeypatch.setattr(emulated, "_apply", triton_emulation._Kernel(_broken))
    x = torch.randn(6, 5, 7, 3) * 2 + 1
    rm, rv = torch.rand(5), torch.rand(5) + 0.5
    ref_m, ref_v = rm.clone(), rv.clone()
    with pytest.warns(RuntimeWarning, match="first call"):
        y = _triton.batch_norm(x, None, None, 1e-5, running=(rm, rv, 0.3))[0]
    ref = torch.nn.functional.batch_norm(x, ref_m, ref_v, None, None, True, 0.3, 1e-5)
    torch.testing.assert_close((y, rm, rv), (ref, ref_m, ref_v))


def _compiler_usable() -> str | None:
    """Why the kernels cannot be compiled for a GPU here (no GPU needed), or None."""
    reason = _interpreter_usable()
    if reason is None and not (sys.platform == "linux" and os.uname().machine == "x86_64"):
        return "ptxas ships in triton's Linux x86-64 wheels only"
    if reason is None and importlib.util.find_spec("triton.knobs") is None:
        return "the compile check needs triton 3.4 or newer (triton.knobs)"
    return reason


def _launched_kernels() -> set[str]:
    """The kernels of ``_triton_kernels`` that ``_triton`` and ``_triton_zoo`` launch (the
    ``@triton.jit`` functions they name; the others are helpers the kernels call)."""
    norms = ROOT / "normzoo" / "norms"
    jit = re.findall(r"@triton.jit\ndef (_\w+)", (norms / "_triton_kernels.py").read_text())
    text = (norms / "_triton.py").read_text() + (norms / "_triton_zoo.py").read_text()
    return {name for name in jit if re.search(rf"\.{name}\b", text)}


def _compile_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return {**env, "PYTHONPATH": str(ROOT)}


def _compiled_run(code: str) -> str:
    """``python -c code`` where the kernels compile (no interpreter); its stdout, asserting
    that it succeeded."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_compile_env(),
        cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.timeout(900)
@pytest.mark.skipif(_compiler_usable() is not None, reason=str(_compiler_usable()))
def test_every_kernel_compiles_for_a_gpu(tmp_path):
    """scripts/triton_compile_check.py --quick, in two processes: every variant that the
    modules launch (and each flag set of the interpreter check's calls) compiles for sm_90
    with Triton's compiler and ptxas, no GPU needed; each launched kernel among them;
    registers and spills reported."""
    out_json = tmp_path / "variants.json"
    script = str(ROOT / "scripts" / "triton_compile_check.py")
    out = subprocess.run(
        [sys.executable, script, "--quick", "--jobs", "2", "--json", str(out_json)],
        capture_output=True, text=True, env=_compile_env(), cwd=ROOT, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "failures 0" in out.stdout
    found = json.loads(out_json.read_text())
    compiled = {v["kernel"] for v in found["variants"]}
    assert compiled == _launched_kernels(), compiled ^ _launched_kernels()
    assert all(v["arch"] == 90 and 0 < v["registers"] <= 255 for v in found["variants"])
    assert found["skipped"] > 0  # the interpreter calls' other tiles of compiled flag sets


BAD_KERNEL = """
import triton
import triton.language as tl


@triton.jit
def bad(X, N: tl.constexpr, B: tl.constexpr):
    acc = 0  # an int, then a tensor: Python (the interpreter) takes it, the compiler not
    for i in range(0, N, B):
        acc = tl.load(X + i + tl.arange(0, B))
    tl.store(X + tl.arange(0, B), acc)
"""

RUN_BAD = """
import sys, torch
sys.path[:0] = [{tmp!r}, {scripts!r}]
import bad_kernel, triton_compile_check as C
rec = C.Record()
try:
    with C.compile_only(90, rec):
        bad_kernel.bad[(1,)](torch.zeros(8), 8, B=4)
except Exception:
    pass
print(rec.failures[0]["kernel"] if rec.failures else "none", len(rec.variants))
"""


@pytest.mark.skipif(_compiler_usable() is not None, reason=str(_compiler_usable()))
def test_the_compile_check_catches_what_the_interpreter_lets_through(tmp_path):
    """A kernel whose loop changes a value's type runs under the interpreter and fails to
    compile: the compile check records the failure."""
    (tmp_path / "bad_kernel.py").write_text(BAD_KERNEL)
    code = RUN_BAD.format(tmp=str(tmp_path), scripts=str(ROOT / "scripts"))
    stdout = _compiled_run(code)
    assert stdout.split() == ["bad", "0"]
    interp = "import sys, torch; sys.path.insert(0, {tmp!r}); import bad_kernel; x = torch.ones(8)"
    interp += "; bad_kernel.bad[(1,)](x, 8, B=4); print(x.tolist())"
    out = subprocess.run(
        [sys.executable, "-c", interp.format(tmp=str(tmp_path))],
        capture_output=True, text=True, env={**_compile_env(), "TRITON_INTERPRET": "1"},
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == str([1.0] * 8)


FLAG_KERNEL = """
import triton
import triton.language as tl


@triton.jit
def scale(X, N, F: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(X + offs, mask=offs < N)
    if F:
        x = x * 2
    tl.store(X + offs, x, mask=offs < N)
"""

RUN_BY_FLAGS = """
import sys, torch
sys.path[:0] = [{tmp!r}, {scripts!r}]
import flag_kernel, triton_compile_check as C
rec = C.Record()
x = torch.zeros(8)
with C.compile_only(90, rec):
    flag_kernel.scale[(1,)](x, 8, F=True, BLOCK=16)  # (a module's run: every variant)
    rec.by_flags = True
    for b, f in [(4, True), (8, True), (4, False), (8, False)]:
        flag_kernel.scale[(1,)](x, 8, F=f, BLOCK=b)
print(sorted((v["constexprs"]["F"], v["constexprs"]["BLOCK"]) for v in rec.variants.values()))
print(rec.skipped)
"""


@pytest.mark.skipif(_compiler_usable() is not None, reason=str(_compiler_usable()))
def test_the_quick_check_compiles_each_flag_set_of_the_interpreter_calls_once(tmp_path):
    """``Record.by_flags`` (``--quick``'s interpreter check's calls, small tiles): a launch
    compiles where its flags are new, whatever its tile; one whose flags were compiled
    before with another tile, by these calls or by a run that compiles every variant (the
    modules'), is skipped and counted."""
    (tmp_path / "flag_kernel.py").write_text(FLAG_KERNEL)
    stdout = _compiled_run(RUN_BY_FLAGS.format(tmp=str(tmp_path), scripts=str(ROOT / "scripts")))
    variants, skipped = stdout.strip().splitlines()
    assert variants == str([(False, 4), (True, 16)])
    assert skipped == "3"


VECTOR_CHECK = """
import sys
sys.path.insert(0, {scripts!r})
import triton_compile_check as C
from normzoo.norms import _triton as T
for name, shape, cl in {cases!r}:
    rec = C.Record()
    with C.triton_paths(132), C.compile_only(90, rec):
        C.run_case(name, shape, "float32", cl, False)
    loads = {{v["kernel"]: v["vector_loads"] for v in rec.variants.values()}}
    stats = loads.get("_partial_stats", loads.get("_group_fwd"))
    print(name, stats > 0, T._vectorized(shape, not cl))
"""


@pytest.mark.skipif(_compiler_usable() is not None, reason=str(_compiler_usable()))
def test_the_dispatch_serves_the_compiled_variants_that_were_measured():
    """The premise of ``_triton._vectorized`` (the measured rule), checked against Triton's
    compiler: the statistics kernel reads the tensor in vectors exactly where the positions
    (contiguous) or channels (channels_last) are a multiple of 16, as in the measured
    shapes; at 14 x 14 positions or 40 channels it compiles to scalar loads."""
    cases = [
        ("bn", (8, 64, 14, 14), False),
        ("bn", (8, 64, 16, 16), False),
        ("gn", (8, 64, 14, 14), False),  # one pass
        ("gn", (8, 64, 12, 12), False),  # 144 = 9 x 16
        ("gn", (8, 40, 16, 16), True),  # channels_last: two phases over rows of C
        ("gn", (8, 48, 16, 16), True),
    ]
    code = VECTOR_CHECK.format(scripts=str(ROOT / "scripts"), cases=cases)
    stdout = _compiled_run(code)
    rows = [line.split() for line in stdout.splitlines()]
    assert len(rows) == len(cases)
    assert all(vector == rule for _, vector, rule in rows), stdout
    assert [rule for *_, rule in rows] == ["False", "True"] * 3


@pytest.mark.timeout(600)
@pytest.mark.skipif(_interpreter_usable() is not None, reason=str(_interpreter_usable()))
def test_two_phase_lane_partials_under_the_interpreter():
    """The two-phase kernels' per-lane variants (``_triton.TWO_PHASE_LANE_ACC`` 1 and 2,
    candidates for the GPU's A/B, off by default): batch norm and channels_last cases on the
    small shapes against torch, and inputs near 1e4 against float64 (the shifted lanes keep
    the variance within 20x torch's error), in two processes each."""
    for variant in ("1", "2"):  # Welford lanes, shifted sums
        total = _interpreter_check_in_two_shards(
            "--lane-acc", variant, "--quick", expect=f"lane_acc {variant}"
        )
        assert total >= 20  # both shards ran their share


@pytest.mark.skipif(_interpreter_usable() is not None, reason=str(_interpreter_usable()))
def test_gpu_triton_ab_runs_on_the_cpu_under_the_interpreter(tmp_path):
    """``scripts/gpu_triton_ab.py --device cpu``: every step of the GPU A/B (the launch costs,
    each plan configuration of a two-phase and a token case, a zoo module's A/B on a conv
    input and on tokens) on tiny tensors under the interpreter, the kernels run (the module's
    with ``NORMZOO_TRITON=all`` only) and not fallen back, rows written. Its
    first GPU run stopped at a bug of its plan loop that this would have caught."""
    out = tmp_path / "ab.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    args = ["--device", "cpu", "--shapes", "2,32,4,4", "16,64", "--dtypes", "float32"]
    args += ["--cases", "bn_contiguous", "ln_tokens", "--modules", "frn"]
    args += ["--module-shapes", "2,8,4,4", "16,32", "--repeats", "1", "--json", str(out)]
    script = str(ROOT / "scripts" / "gpu_triton_ab.py")
    run = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["gpu"] == "cpu" and data["launch_us"]["triton_launch"] > 0
    assert data["launch_us"]["normzoo_launch"] > 0
    rows = {r["case"]: r for r in data["rows"]}
    assert set(rows) == {"bn_contiguous", "ln_tokens"}
    # each case times the configurations that differ in the knobs its kernels read
    assert len(rows["ln_tokens"]["configs"]) == 6 and len(rows["bn_contiguous"]["configs"]) == 11
    for row in rows.values():
        assert row["torch_fwd_ms"] > 0 and row["host_us"]["fwdbwd"] > 0
    conv, tokens = data["modules"]  # (16, 32): FRN over tokens, the token-group kernels
    assert conv["shape"] == [2, 8, 4, 4] and tokens["shape"] == [16, 32]
    for module in (conv, tokens):
        assert module["module"] == "frn" and module["triton_fwdbwd_ms"] > 0
        assert module["triton_ran"] == {"triton": True, "default": False}


DIRECT_CHECK = """
import sys, torch
sys.path.insert(0, {scripts!r})
import triton_compile_check as C
from triton import knobs
from normzoo.norms import _triton as T

k = T._kernels()
kw = dict(HAS_W=False, HAS_B=False, RELU=False, RB=4, DB=64, num_warps=4)


def same(a, b):  # what the driver's launcher got: the grid, stream, function, metadata, args
    return len(a) == len(b) and all(u is v or (not torch.is_tensor(u) and u == v)
                                    for i, (u, v) in enumerate(zip(a, b)) if i not in (6, 7, 8))


def token_args(x):
    r = x.shape[0]
    return (x, torch.empty_like(x), None, None, torch.empty(r), torch.empty(r), r, 64, 1e-5)


aligned = token_args(torch.randn(4, 64))
shifted = token_args(torch.randn(4 * 64 + 1)[1:].view(4, 64))  # x 4 bytes off 16
one_row = token_args(torch.randn(1, 64))  # r == 1: Triton makes it a constant
with C.stand_in_launches() as calls:
    functions = []
    for args in (aligned, shifted, one_row, aligned):
        calls.clear()
        k._token_fwd[(3,)](*args, **kw)  # Triton's path
        T._launch(k._token_fwd, (3,), *args, **kw)  # first of its variant: Triton's path
        T._launch(k._token_fwd, (3,), *args, **kw)  # direct
        triton, first, direct = calls
        print("variant", same(triton, direct), same(triton, first), direct[6:9] == (None,) * 3,
              first[6] is not None)
        functions.append(direct[4])
    launcher = T._launchers[id(k._token_fwd)]
    print("functions", len(set(functions)), len(launcher.compiled))
    hook = lambda metadata: None
    knobs.runtime.launch_enter_hook.add(hook)
    try:
        calls.clear()
        T._launch(k._token_fwd, (3,), *aligned, **kw)
        print("hooked", calls[0][7] is knobs.runtime.launch_enter_hook, calls[0][6] is not None)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)


def summary(call):
    return (call[:6], [(a.dtype, tuple(a.shape), a.stride(), a.data_ptr() % 16)
                       if torch.is_tensor(a) else a for a in call[9:]])


with C.triton_paths(132), C.stand_in_launches() as calls:
    for name, shape, cl in {modules!r}:
        runs = []
        for direct in (False, True):
            T.DIRECT_LAUNCH = direct
            calls.clear()
            C.run_case(name, shape, "float32", cl, False)
            runs.append([summary(c) for c in calls])
            hooks = {{c[7] is None for c in calls}}
        T.DIRECT_LAUNCH = True
        print("module", name, len(runs[0]), runs[0] == runs[1], hooks)
"""


def test_the_direct_launch_is_on_unless_switched_off():
    code = "from normzoo.norms import _triton as T; print(T.DIRECT_LAUNCH)"
    for value, expect in (("0", "False"), ("1", "True"), (None, "True")):
        env = {k: v for k, v in os.environ.items() if k != "NORMZOO_TRITON_DIRECT"}
        env.update({"NORMZOO_TRITON_DIRECT": value} if value else {})
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert out.stdout.strip() == expect, out.stderr


@pytest.mark.skipif(_compiler_usable() is not None, reason=str(_compiler_usable()))
def test_the_direct_launch_hands_the_driver_what_triton_does():
    """``_triton._Launcher`` (Triton launches without ``kernel[grid]``'s host work), checked
    against Triton's own launch path without a GPU: the kernels compiled for sm_90, each
    launch run to the driver's launcher (a stand-in that records what it gets). The direct
    launch hands it the same grid, stream, compiled function, metadata and arguments as
    ``kernel[grid]`` on a tensor 16-byte aligned or not and a row count of 1 (three variants
    that Triton compiles apart, so three cached kernels), without launch metadata or hooks;
    with a launch hook set it takes Triton's path; and every module's launches (BatchNorm,
    GroupNorm, LayerNorm over tokens, Batch Renorm, EvoNorm-B0) reach the launcher the same
    with and without it, the first of each variant through Triton's path and the rest
    direct."""
    modules = [
        ("bn", (8, 64, 16, 16), False),
        ("gn", (8, 64, 16, 16), True),
        ("ln_tokens", (64, 256), False),
        ("batchrenorm", (8, 32, 8, 8), False),
        ("evonormb0", (8, 32, 8, 8), False),
    ]
    code = DIRECT_CHECK.format(scripts=str(ROOT / "scripts"), modules=modules)
    stdout = _compiled_run(code)
    lines = [line.split() for line in stdout.splitlines()]
    variants = [line[1:] for line in lines if line[0] == "variant"]
    # the fourth, aligned again: its first launch is a direct one already
    assert variants == [["True"] * 4] * 3 + [["True", "True", "True", "False"]], stdout
    assert ["functions", "3", "3"] in lines, stdout
    assert ["hooked", "True", "True"] in lines, stdout
    found = {line[1]: line[2:] for line in lines if line[0] == "module"}
    assert set(found) == {name for name, *_ in modules}, stdout
    for name, (count, same, *hooks) in found.items():
        # more launches than variants: the second step's and the eval's launches went direct
        assert int(count) >= 6 and same == "True" and " ".join(hooks) == "{False, True}", name


SASS_CHECK = """
import sys, torch
sys.path.insert(0, {scripts!r})
import triton_compile_check as C
from normzoo.norms import _triton as T
x = torch.randn(64, 64, 32, 32).to(torch.bfloat16).to(memory_format=torch.channels_last)
for lanes in (0, 2):
    T.TWO_PHASE_LANE_ACC_ROWS = lanes
    rec = C.Record(sass=True)
    with C.triton_paths(132), C.compile_only(90, rec):
        T.batch_norm(x, None, None, 1e-5)
    (v,) = [v for v in rec.variants.values() if v["kernel"] == "_partial_stats"]
    print(lanes, v["loop_instructions"], v["loop_shuffles"], v["loop_barriers"], v["loop_shared"])
"""


@pytest.mark.skipif(_compiler_usable() is not None, reason=str(_compiler_usable()))
def test_the_compile_check_counts_the_statistics_loop(tmp_path):
    """``triton_compile_check.Record(sass=True)``: the largest loop of each variant's machine
    code for sm_90. Batch norm's statistics on channels_last bfloat16: the per-tile reduction
    (no lanes) loops through shuffles, barriers and shared memory every tile; the shipped
    per-lane sums loop through none of them, in well under half the instructions (the
    twenty-fourth session's reading, which the H200's A/B confirmed)."""
    code = SASS_CHECK.format(scripts=str(ROOT / "scripts"))
    stdout = _compiled_run(code)
    (_, tile, shuffles, barriers, shared), (_, lanes, *syncs) = (
        [int(v) for v in line.split()] for line in stdout.split("\n") if line
    )
    assert shuffles > 0 and barriers > 0 and shared > 0
    assert syncs == [0, 0, 0] and 0 < lanes < tile / 2
