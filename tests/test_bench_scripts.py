"""The benchmark harness and its report: rows measured for real (tiny shapes), then the docs'
page rendered from them, CPU and CUDA sections, failing rows listed."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from norm_testing import load_script

import normzoo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_script("bench")


def test_bench_rows_compare_with_torch_and_batchnorm(bench):
    row = bench.bench_row(
        "gn", (4, 8, 6, 6), torch.float32, "channels_last", torch.device("cpu"), 3, 1
    )
    assert row["norm"] == "groupnorm" and row["impl"] == "fast"
    assert row["channels_last_kept"]
    for mode in bench.MODES:
        assert row[f"{mode}_ms"] > 0 and row[f"torch_{mode}_ms"] > 0 and row[f"bn_{mode}_ms"] > 0
        assert row[f"{mode}_ratio_torch"] == pytest.approx(
            row[f"{mode}_ms"] / row[f"torch_{mode}_ms"]
        )
    ref = bench.bench_row(
        "rmsnorm", (4, 8, 6, 6), torch.float32, "contiguous", torch.device("cpu"), 3, 1, "reference"
    )
    assert ref["impl"] == "reference" and ref["torch_fwdbwd_ms"] is None


def test_bench_main_records_failing_rows_and_writes_json(bench, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(bench, "bench_row", broken)
    out = tmp_path / "run.json"
    result = bench.main(
        ["--devices", "cpu", "--norms", "bn", "--shapes", "4,8,6,6", "--dtypes", "float32",
         "--formats", "contiguous", "--repeats", "1", "--warmup", "0", "--no-train",
         "--cuda-timing", "gpu", "--json", str(out)]
    )  # fmt: skip
    assert result["meta"]["cuda_timing"] == "gpu"
    assert result["errors"] and "kernel exploded" in result["errors"][0]["error"]
    assert json.loads(out.read_text())["errors"] == result["errors"]
    assert set(result["compile_s"]["cpu"]) == {"batchnorm"}  # its first call, timed
    assert "triton_knobs" not in result["meta"]
    again = bench.main(
        ["--devices", "cpu", "--norms", "bn", "--shapes", "4,8,6,6", "--dtypes", "float32",
         "--formats", "contiguous", "--repeats", "1", "--warmup", "0", "--no-train",
         "--no-first-call", "--triton-knobs", f"TILE={_triton_tile()}"]
    )  # fmt: skip
    assert again["compile_s"] == {} and again["meta"]["triton_knobs"] == {"TILE": _triton_tile()}


def _triton_tile() -> int:
    from normzoo.norms import _triton

    return _triton.TILE  # (set to what it is: the run changes nothing for later tests)


def test_report_renders_cpu_and_cuda_sections(bench, tmp_path, monkeypatch):
    report = load_script("bench_report")
    result = bench.main(
        ["--devices", "cpu", "--norms", "bn", "gn", "--shapes", "4,8,6,6", "16,8",
         "--dtypes", "float32", "--formats", "contiguous", "--repeats", "2", "--warmup", "0",
         "--no-train", "--json", str(tmp_path / "cpu.json")]
    )  # fmt: skip
    gpu = copy.deepcopy(result)  # the same rows, presented as a GPU run with a failing row
    for r in gpu["rows"]:
        r["device"] = "cuda"
    gpu["meta"]["cuda"] = "Some GPU"
    gpu["meta"]["title"] = "GPU run"
    gpu["meta"]["cuda_timing"] = "gpu"
    gpu["errors"] = [{"norm": "ln", "shape": [16, 8], "dtype": "bfloat16", "format": "contiguous",
                      "device": "cuda", "error": "RuntimeError: expected scalar type"}]  # fmt: skip
    gpu["rows"][0]["gpu_time_late"] = {"normzoo_fwdbwd": 2}  # its GPU time counts host time
    (tmp_path / "gpu.json").write_text(json.dumps(gpu))
    page = tmp_path / "performance.md"
    monkeypatch.setattr(
        sys, "argv",
        ["bench_report.py", str(tmp_path / "cpu.json"), str(tmp_path / "gpu.json"),
         "--out", str(page), "--plot", str(tmp_path / "cpu.png"),
         "--cuda-plot", str(tmp_path / "cuda.png")],
    )  # fmt: skip
    report.main()
    text = page.read_text()
    assert "### CPU, float32, contiguous (fwd+bwd)" in text
    assert "## GPU run" in text and "### CUDA bandwidth" in text
    assert "- CUDA timing: `gpu`" in text
    assert "### Rows that failed" in text and "expected scalar type" in text
    gn = next(r for r in result["rows"] if r["norm"] == "groupnorm" and len(r["shape"]) == 4)
    assert f"| groupnorm | 4x8x6x6 | {gn['fwdbwd_ms']:.3f} |" in text
    assert all(r["gpu_time_late"] == {} for r in result["rows"])  # (CPU rows: never late)
    first = gpu["rows"][0]
    assert f"| {_shape(first)} | {first['fwdbwd_ms']:.3f} ‡ |" in text
    assert text.count(" ‡ |") == 1 and "‡ GPU time that includes host time" in text
    assert (tmp_path / "cpu.png").exists() and (tmp_path / "cuda.png").exists()


def _shape(row: dict) -> str:
    return "x".join(map(str, row["shape"]))


class _FakeEvent:
    """A CUDA event whose ``query()`` says whether the GPU had reached it: ``done``."""

    done = False

    def __init__(self, enable_timing: bool = False) -> None:
        pass

    def record(self) -> None:
        pass

    def query(self) -> bool:
        return _FakeEvent.done

    def elapsed_time(self, other: _FakeEvent) -> float:
        return 1.0


def test_gpu_timing_counts_calls_whose_launches_outlast_the_sleep(bench, monkeypatch):
    """With --cuda-timing gpu, a call whose host work ends after the GPU left its sleep (the
    start event already reached) is counted per case: its GPU time includes host time."""
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: None)
    timer = bench.Timer(torch.device("cpu"))
    timer.cuda, timer.flush = True, torch.zeros(1)  # a "gpu"-timing CUDA timer, on the CPU

    def slow() -> None:
        _FakeEvent.done = True  # the host still launching when the GPU woke

    def quick() -> None:
        _FakeEvent.done = False

    cases = {"normzoo_fwdbwd": (slow, None), "torch_fwdbwd": (quick, None)}
    times = bench.run_rounds(cases, timer, 3)
    assert times == {"normzoo_fwdbwd": [1e-3] * 3, "torch_fwdbwd": [1e-3] * 3}
    assert bench._late(timer, "a row", 3) == {"normzoo_fwdbwd": 3}


def test_rounds_shuffle_the_order_so_no_case_keeps_its_predecessor(bench):
    """Every case runs once per round, in a fresh seeded order: a case's predecessor (whose
    caches and freed memory it meets) changes between rounds, the same way in every run."""
    log = []
    cases = {k: ((lambda k=k: log.append(k)), None) for k in "abcde"}
    times = bench.run_rounds(cases, lambda fn, setup: fn() or 1.0, 40)
    assert {k: len(v) for k, v in times.items()} == dict.fromkeys("abcde", 40)
    rounds = [log[i : i + 5] for i in range(0, len(log), 5)]
    assert all(sorted(r) == list("abcde") for r in rounds)
    before = {k: {r[r.index(k) - 1] for r in rounds if r.index(k) > 0} for k in "abcde"}
    assert all(len(preds) == 4 for preds in before.values())  # each follows every other case
    again = []
    cases = {k: ((lambda k=k: again.append(k)), None) for k in "abcde"}
    bench.run_rounds(cases, lambda fn, setup: fn() or 1.0, 40)
    assert again == log


def test_frozen_batchnorm_is_compared_with_an_eval_mode_batchnorm(bench):
    """FrozenBatchNorm normalizes with running statistics: its torch.nn equivalent must stay
    in eval mode while the harness puts every module in training mode."""
    row = bench.bench_row(
        "frozenbatchnorm", (4, 8, 6, 6), torch.float32, "contiguous", torch.device("cpu"), 2, 1
    )
    assert row["torch_mode"] == "eval"
    report = load_script("bench_report")
    old = dict(row, torch_mode=None)  # runs from before the fix: no valid torch comparison
    assert report._valid_torch(old)["fwdbwd_ratio_torch"] is None
    assert report._valid_torch(row)["fwdbwd_ratio_torch"] == row["fwdbwd_ratio_torch"]
    train = bench.train_row("frozenbatchnorm", torch.device("cpu"), 4, 1, 0)
    assert train["torch_mode"] == "eval"


def test_training_rows_pair_the_rounds(bench, monkeypatch):
    """The training step's paired ratio is the median of torch/normzoo within each round, and
    the table shows it with its quartiles."""
    rounds = {  # torch/normzoo ratios 1.5, 1.0, 0.5; torch/torch_again 1.5, 1, 1
        "normzoo": [1.0, 2.0, 4.0],
        "torch": [1.5, 2.0, 2.0],
        "torch_again": [1.0, 2.0, 2.0],
    }
    import normzoo.bench  # the harness's core, where warm_and_run finds run_rounds

    monkeypatch.setattr(normzoo.bench, "run_rounds", lambda cases, timer, repeats: rounds)
    row = bench.train_row("gn", torch.device("cpu"), 4, 3, 0)
    assert row["throughput_ratio"] == 1.0  # median 2.0 / median 2.0
    assert row["throughput_paired"] == 1.0 and row["throughput_min"] == 1.5
    assert row["throughput_paired_iqr"][0] <= 1.0 <= row["throughput_paired_iqr"][1]
    assert row["aa_ratio"] == 1.0 and row["aa_paired"] == 1.0
    rounds["torch"] = [3.0, 4.0, 8.0]  # ratios 3, 2, 2: the medians' ratio is 2 too
    row = bench.train_row("gn", torch.device("cpu"), 4, 3, 0)
    assert row["throughput_paired"] == 2.0 and row["throughput_min"] == 3.0
    table = load_script("bench_report").train_table([row])
    assert "| paired ratio (quartiles) |" in table
    assert f"| 2.00 ({row['throughput_paired_iqr'][0]:.2f}-" in table
    assert "| A/A: torch.nn vs torch.nn (paired) |" in table
    assert "| 2.00 (3.00) |" in table  # torch 3, 4, 8 against torch_again 1, 2, 2


def test_training_rows_with_the_relu_fused(bench, monkeypatch):
    """--fused-train adds a row per norm whose kernels fuse the ReLU: normzoo's model built
    with fuse_activation=True (its norms apply the ReLU, no nn.ReLU left), torch.nn's as
    before; the table marks it."""
    built = []
    default_model = bench.default_model

    def spy(norm, fuse_activation=False):
        model = default_model(norm, fuse_activation)
        built.append((norm if isinstance(norm, str) else "torch", fuse_activation, model))
        return model

    monkeypatch.setattr(bench, "default_model", spy)
    rows = bench.main(["--norms", "gn", "frozenbn", "--no-rows", "--repeats", "1", "--warmup",
                       "0", "--train-batch", "2"])["train"]  # fmt: skip
    assert [(r["norm"], r["fused_activation"]) for r in rows] == [
        ("groupnorm", False), ("frozenbatchnorm", False), ("groupnorm", True),
        ("frozenbatchnorm", True),
    ]  # fmt: skip
    fused = [m for who, fuse, m in built if fuse]
    assert len(fused) == 2 and [w for w, f, _ in built].count("torch") == 8
    for model in fused:
        assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
        assert {m.activation for m in model.modules() if hasattr(m, "activation")} == {"relu"}
    for who, fuse, model in built:  # the plain rows and torch.nn's: a norm, then nn.ReLU
        if not fuse:
            assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 4, who
            assert not any(getattr(m, "activation", None) for m in model.modules()), who
    table = load_script("bench_report").train_table(rows)
    assert table.count("(ReLU fused)") == 2 and "| groupnorm (ReLU fused) |" in table
    rows = bench.main(["--norms", "gn", "--no-rows", "--no-fused-train", "--repeats", "1",
                       "--warmup", "0", "--train-batch", "2"])["train"]  # fmt: skip
    assert [r["fused_activation"] for r in rows] == [False]


def test_bench_rows_with_an_activation(bench):
    """--activation relu: ours applies the ReLU itself, torch.nn's and BatchNorm2d are
    followed by nn.ReLU; the report names the rows for it."""
    cpu = torch.device("cpu")
    row = bench.bench_row("gn", (4, 8, 6, 6), torch.float32, "contiguous", cpu, 2, 0, None, "relu")
    assert row["activation"] == "relu" and row["fwdbwd_ratio_torch"] > 0
    frozen = bench.bench_row("frozenbn", (4, 8, 6, 6), torch.float32, "contiguous", cpu, 2, 0,
                             None, "relu")  # fmt: skip
    assert frozen["torch_mode"] == "eval"  # the norm inside nn.Sequential(norm, nn.ReLU())
    report = load_script("bench_report")
    data = report.label_activations({"rows": [row, bench.bench_row(
        "gn", (4, 8, 6, 6), torch.float32, "contiguous", cpu, 2, 0)]})  # fmt: skip
    assert [r["norm"] for r in data["rows"]] == ["groupnorm + relu", "groupnorm"]
    assert "| groupnorm + relu | 4x8x6x6 |" in report.main_table(data["rows"])


def test_row_kernel_bench_times_both_layouts_against_torch():
    """scripts/bench_row_kernels.py: every case timed, ours against torch's operators; and the
    kernels it times compute torch's group norm (checked on one rotating buffer here)."""
    script = load_script("bench_row_kernels")
    rows = script.main(["--shapes", "3,16,4,4", "--groups", "1", "4", "--rounds", "2",
                        "--calls", "1", "--buffers", "2"])  # fmt: skip
    assert [(r["groups"], r["layout"]) for r in rows] == [
        (1, "contiguous"), (1, "channels_last"), (4, "contiguous"), (4, "channels_last")
    ]  # fmt: skip
    for r in rows:
        assert all(r[k] > 0 for k in ("ours_fwd_us", "torch_fwd_us", "ours_bwd_us", "torch_bwd_us"))
    lib = script._library()
    x = torch.randn(3, 16, 4, 4).contiguous(memory_format=torch.channels_last)
    y, mean, rstd = torch.empty_like(x), torch.empty(3 * 4), torch.empty(3 * 4)
    w, b = torch.rand(16) + 0.5, torch.randn(16)
    p = script._ptr
    status = lib.nz_row_forward_cl(p(x), p(w), p(b), p(y), p(mean), p(rstd), None, 3, 4, 4, 16,
                                   1e-5, 2)  # fmt: skip
    assert status == 0
    torch.testing.assert_close(y, torch.group_norm(x, 4, w, b, 1e-5), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="native kernels: Linux only")
def test_kernel_ab_times_two_builds_on_the_same_tensors(tmp_path):
    """scripts/bench_kernel_ab.py: a revision against itself gives the same bits for every
    case, and the kernels it times compute torch's batch and group norms (and their ReLU)."""
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    script = load_script("bench_kernel_ab")
    out = tmp_path / "ab.json"
    rows = script.main(["--base", "HEAD", "--new", "HEAD", "--shapes", "3,32,20,20",
                        "--rounds", "2", "--json", str(out)])  # fmt: skip
    assert [r["case"] for r in rows] == list(script.CASES)
    assert all(r["identical"] for r in rows)
    assert all(r[k] > 0 for r in rows for k in ("base_fwd_us", "new_bwd_us", "fwd_ratio"))
    assert json.loads(out.read_text())["rows"] == rows
    from normzoo import _native

    libs = {}  # the libraries normzoo loads (main() built the script's own, twice at once)
    for name, groups in (("batch_norm", None), ("row_norm", 8)):
        lib = libs[name] = _native.load(name)
        for relu in (False, True):
            buf = script.Buffers((3, 32, 20, 20), groups, 2, relu)
            y = script.kernels(lib, buf)[2]()[0]
            x = buf.x.view(3, 32, 20, 20)
            want = (
                torch.nn.functional.batch_norm(x, None, None, buf.w, buf.b, training=True)
                if groups is None
                else torch.group_norm(x, groups, buf.w, buf.b, 1e-5)
            )
            want = torch.relu(want) if relu else want
            torch.testing.assert_close(y.view_as(x), want, atol=1e-5, rtol=1e-5)
    lib = libs["batch_norm"]
    x = torch.randn(3, 32, 20, 1).contiguous(memory_format=torch.channels_last)
    w, b = torch.rand(32) + 0.5, torch.randn(32)
    for relu in (False, True):  # bn_cl: BatchNorm's channels_last kernels (and their ReLU)
        y = script.bn_cl_kernel_calls(lib, x, torch.randn_like(x), w, b, relu)[2]()[0]
        want = torch.nn.functional.batch_norm(x, None, None, w, b, training=True)
        torch.testing.assert_close(y, torch.relu(want) if relu else want, atol=1e-5, rtol=1e-5)
    rows = torch.randn(70, 32)  # ghost_tok: virtual batches of 32 rows (and a last of 6)
    y = script.ghost_kernel_calls(lib, rows, torch.randn_like(rows), w, b)[2]()[0]
    want = torch.cat([torch.nn.functional.batch_norm(r, None, None, w, b, training=True)
                      for r in rows.split(32)])  # fmt: skip
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="native kernels: Linux only")
def test_kernel_ab_covers_the_wider_zoo(tmp_path):
    """The wider zoo's cases (rows and tokens): a revision against itself gives the same bits
    (on the bfloat16 builds), and a case's calls compute what ``zoo_kernels`` does, both on
    the library normzoo loads (float32)."""
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    script = load_script("bench_kernel_ab")
    cases = ["frn", "switchable", "b0_tok", "gn_tok"]
    rows = script.main(["--base", "HEAD", "--new", "HEAD", "--shapes", "3,32,5,4", "--rounds",
                        "2", "--cases", *cases, "--dtype", "bfloat16"])  # fmt: skip
    assert [r["case"] for r in rows] == cases and all(r["identical"] for r in rows)
    from normzoo import _native
    from normzoo._native import zoo_kernels

    real = zoo_kernels._lib
    lib = _native.load("zoo")  # main() built the script's own twice; no third compile
    x = torch.randn(3, 32, 20)
    dy, w, b = torch.randn(3, 32, 20).to(x.dtype), torch.rand(32) + 0.5, torch.randn(32)
    got = script.zoo_kernel_calls(lib, "frn", x, dy, w, b)[2]()
    assert zoo_kernels._lib is real  # restored: what follows runs on the library normzoo loads
    tau = torch.linspace(-0.2, 0.2, 32)
    y, mean, var, params = zoo_kernels.frn_forward(x, w, b, tau, 1e-6)
    want = [y, mean, var, params, *zoo_kernels.frn_backward(dy, x, params, mean, var, w, 1e-6,
                                                           (True,) * 4)]  # fmt: skip
    assert all(torch.equal(a, c) for a, c in zip(got, want, strict=True))


def test_gpu_fused_ab_times_the_core_norms_compiled_reference(tmp_path):
    """--core adds BatchNorm, GroupNorm and LayerNorm, whose ``fused`` column is their
    reference math through ``_fused.fuse`` (eager on the CPU): the same function as the
    module's path, batch statistics for BatchNorm, its running statistics untouched."""
    ab = load_script("gpu_fused_ab")
    args = ["--device", "cpu", "--norms", "frn", "--core", "--shapes", "4,8,6,6"]
    rows = ab.main([*args, "--repeats", "2", "--warmup", "1"])
    assert [r["norm"] for r in rows] == ["frn", "batchnorm", "groupnorm", "layernorm"]
    for row in rows:
        assert row["eval_err"] < 1e-5 and row["fallback"] == [] and row["fused_ms"] > 0
    bn = normzoo.create("bn", 8)
    candidate = ab.CompiledReference("batchnorm", bn)
    x = torch.randn(4, 8, 6, 6) + 1
    y = candidate(x)
    assert torch.equal(bn.running_mean, torch.zeros(8))  # the candidate leaves them alone
    torch.testing.assert_close(y, bn(x))
    gn = normzoo.create("gn", 8, num_groups=2)
    torch.testing.assert_close(ab.CompiledReference("groupnorm", gn)(x), gn(x))


def test_gpu_fused_ab_runs_and_writes_rows(tmp_path):
    """The fused-path A/B (a CUDA script) on the CPU, where both columns are the eager path:
    rows with the fields the docs read, the two paths' outputs identical."""
    ab = load_script("gpu_fused_ab")
    out = tmp_path / "ab.json"
    args = ["--device", "cpu", "--norms", "frn", "evonorms0", "--shapes", "4,8,6,6"]
    rows = ab.main([*args, "--repeats", "2", "--warmup", "1", "--json", str(out)])
    assert [r["norm"] for r in rows] == ["frn", "evonorms0"]
    assert json.loads(out.read_text()) == rows
    for row in rows:
        assert row["eval_err"] == 0 and row["fallback"] == [] and row["layout_kept"]
        assert row["speedup"] == pytest.approx(row["eager_ms"] / row["fused_ms"])
        assert row["fused_copy_fraction"] > 0 and row["bn_ms"] > 0
    table = load_script("bench_report").fused_ab_table(rows)
    assert f"| frn | 4x8x6x6 | contiguous | float32 | {rows[0]['fused_ms']:.3f} |" in table


def test_compile_bench_rows_compile_each_model_once(bench, tmp_path):
    """``scripts/bench_compile.py`` (backend ``aot_eager`` here: inductor's code generation
    is not what is tested): BatchNorm at momentum=None, whose model compiled a graph per step
    before, compiles one per model and no more over the warm-up and timed steps; torch's
    ``BatchNorm2d(momentum=None)`` breaks the graph and is recorded, not timed; the rows have
    the fields the docs read, written to the JSON."""
    compile_bench = load_script("bench_compile")
    out = tmp_path / "compile.json"
    args = ["--norms", "bn", "--device", "cpu", "--batch", "4", "--backend", "aot_eager"]
    result = compile_bench.main(
        [*args, "--momentum-none", "--repeats", "2", "--warmup", "1", "--json", str(out)]
    )
    assert result["errors"] == []
    default, cumulative = result["rows"]
    assert (default["momentum"], cumulative["momentum"]) == ("default", None)
    assert set(default["ms"]) == {"eager", "compiled", "torch_compiled", "bn2d_compiled"}
    assert default["graph_breaks"] == {}
    assert set(cumulative["ms"]) == {"eager", "compiled", "bn2d_compiled"}
    assert set(cumulative["graph_breaks"]) == {"torch_compiled"}
    for row in result["rows"]:
        assert row["graphs_first_step"]["compiled"] == 1
        assert row["graphs_first_step"]["eager"] == 0
        assert row["graphs_after_first_step"] == 0
        assert row["compiled_vs_eager"] == pytest.approx(row["ms"]["eager"] / row["ms"]["compiled"])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    table = load_script("bench_report").compile_table(result["rows"])
    assert "| batchnorm | None |" in table and "graph break" in table


def test_accuracy_rows_against_float64_and_the_docs_page(bench, tmp_path):
    """``scripts/accuracy.py``: each path's relative error against the float64 reference math
    (which for the core norms is torch's float64 kernels), rows written to JSON and rendered;
    the docs' page is the rendering of its committed data."""
    import torch.nn.functional as F

    accuracy = load_script("accuracy")
    row = accuracy.accuracy_row("gn", (4, 8, 6, 6), "channels_last", 1000.0)
    assert row["norm"] == "groupnorm" and row["torch_module"] == "GroupNorm"
    for path in ("fast", "reference"):  # torch's own channels_last kernel is not asserted on
        assert 0 < row[f"{path}_y"] < 1e-3 and 0 < row[f"{path}_dx"] < 1e-3
    assert accuracy.accuracy_row("instancenorm", (16, 8), "contiguous", 0.0) is None  # no tokens
    frozen = accuracy.accuracy_row("frozenbn", (4, 8, 6, 6), "contiguous", 100.0)
    assert frozen["torch_y"] < 1e-6  # its torch equivalent holds the same running statistics
    rms = accuracy.accuracy_row("rms", (16, 8), "contiguous", 0.0)
    assert rms["torch_module"] == "RMSNorm" and rms["torch_y"] < 1e-5  # bias zeroed for torch

    x = 1000 + torch.randn(4, 8, 6, 6, dtype=torch.float64)  # the "exact" math is torch's
    exact = normzoo.create("gn", 8, num_groups=2, impl="reference").double()
    torch.testing.assert_close(exact(x), F.group_norm(x, 2), rtol=1e-12, atol=1e-12)
    exact = normzoo.create("bn", 8, impl="reference").double()
    torch.testing.assert_close(exact(x), F.batch_norm(x, None, None, training=True))

    out, page, figure = tmp_path / "accuracy.json", tmp_path / "numerics.md", tmp_path / "a.png"
    result = accuracy.main(
        ["--norms", "bn", "frn", "--shapes", "4,8,6,6", "16,8", "--means", "0", "1000",
         "--json", str(out), "--out", str(page)]
    )  # fmt: skip
    accuracy.plot(result, figure, shape=(4, 8, 6, 6))
    assert figure.stat().st_size > 0
    assert json.loads(out.read_text()) == result
    assert len(result["rows"]) == 2 * 2 * 3  # norms x means x (two layouts, tokens)
    text = page.read_text()
    assert "## 4x8x6x6, channels_last" in text and "## 16x8, tokens" in text
    assert "| batchnorm | `BatchNorm2d` |" in text and "| frn | - |" in text
    committed = json.loads((ROOT / "docs" / "data" / "accuracy.json").read_text())
    assert accuracy.render(committed) == (ROOT / "docs" / "numerics.md").read_text()


def _row(norm, shape, ratio, vs_bn=0.9, fmt="contiguous", device="cpu", **extra):
    row = {"norm": norm, "shape": list(shape), "dtype": "float32", "format": fmt,
           "device": device, "impl": "fast", "activation": None, "torch_mode": "train",
           "fwdbwd_ratio_torch": ratio, "fwdbwd_ratio_bn": vs_bn, "channels_last_kept": True,
           "fwd_copy_fraction": 0.8, "bwd_copy_fraction": 0.8}  # fmt: skip
    row.update(extra)
    return row


def _run(rows, train=(), date="2026-01-01", timing=None):
    return {"meta": {"date": date, "cuda_timing": timing}, "rows": list(rows), "train": list(train)}


def test_targets_table_judges_every_run_and_names_the_worst_row():
    """The performance page's target table: per target each run's worst row against the
    issue's bound; one row over a bound makes that run miss it, and the table says where."""
    report = load_script("bench_report")
    good = _run(
        [_row(n, s, 0.9) for n in ("batchnorm", "layernorm", "groupnorm")
         for s in report.CONV_SHAPES]
        + [_row("instancenorm", (32, 64, 32, 32), 0.45), _row("frn", (8, 256, 14, 14), None, 1.2)],
        train=[{"norm": "groupnorm", "device": "cpu", "fused_activation": True,
                "throughput_ratio": 1.05, "mem_ratio": 0.9},
               {"norm": "groupnorm", "device": "cpu", "fused_activation": False,
                "throughput_ratio": 0.97, "mem_ratio": 1.0}],
    )  # fmt: skip
    good["rows"][0]["fwdbwd_ratio_torch"] = 0.6  # batchnorm 32x64x32x32: 1.67x faster
    bad = copy.deepcopy(good)
    bad["rows"][5]["fwdbwd_ratio_torch"] = 1.07  # layernorm 8x256x14x14 slower than torch.nn
    bad["rows"][-1]["fwdbwd_ratio_bn"] = 1.6  # frn past 1.5x BatchNorm2d
    bad["rows"][-2].update(fwdbwd_ratio_torch=0.55)  # instancenorm: 1.8x, not 2x
    bad["rows"].append(_row("rmsnorm", (4, 8, 6, 6), None, fmt="channels_last",
                            channels_last_kept=False))  # fmt: skip
    runs = [("a.json", good), ("b.json", bad)]
    judged = {t["target"].split(":")[0]: t for t in report.judge(runs)}
    assert len(judged["BatchNorm, LayerNorm, GroupNorm"]["met"]) == 1
    assert len(judged["InstanceNorm"]["met"]) == 1 and len(judged["Wider zoo"]["met"]) == 1
    layout = judged["channels_last input gives channels_last output, every norm and dtype"]
    assert len(layout["met"]) == 0 and layout["failing_rows"] == 1
    # the default model is the fused row (its plain row's 0.97 does not count), memory all rows
    assert judged["Training step of the default model"]["runs"][0][0] == 1.05
    assert judged["Training step"]["runs"][0][0] == 1.0
    text = report.targets_table(runs)
    assert "| 1 of 2 runs | layernorm 8x256x14x14 contiguous: 1.07 (`b.json`) |" in text
    assert "instancenorm 32x64x32x32 contiguous: 0.55 (`b.json`)" in text
    assert "| 2 of 2 runs | batchnorm 32x64x32x32 contiguous: 0.60" in text
    assert "frn 8x256x14x14 contiguous: 1.60" in text
    assert "| GPU: each norm's copy fraction on the largest shapes | >= 0.70 | 0 | - | not " in text
    lost = "| every row | 1 (1) | lost in 1 of them | 0 of 1 runs | rmsnorm 4x8x6x6 channels_last"
    assert lost in text


def test_targets_table_splits_the_runs_by_cpu():
    """Runs of two CPUs: a table each (the CPU with more runs first), each judging only its
    own runs; the GPU aim after the first table only. One CPU: one table, no heading."""
    report = load_script("bench_report")
    rows = [_row(n, s, 0.9) for n in ("batchnorm", "layernorm", "groupnorm")
            for s in report.CONV_SHAPES]  # fmt: skip
    intel = [_run(copy.deepcopy(rows)) for _ in range(2)]
    amd = _run(copy.deepcopy(rows))
    amd["rows"][1]["fwdbwd_ratio_torch"] = 1.2  # batchnorm 8x256x14x14, on this CPU only
    for data, cpu in ((intel[0], "Xeon"), (intel[1], "Xeon"), (amd, "EPYC")):
        data["meta"]["cpu"] = cpu
    gpu = _run([_row("batchnorm", (256, 64, 64, 64), None, device="cuda")])  # no CPU target
    runs = [("a.json", intel[0]), ("e.json", amd), ("b.json", intel[1]), ("g.json", gpu)]
    text = report.targets_table(runs)
    xeon, epyc = text.split("**EPYC** (1 run):")
    assert xeon.startswith("**Xeon** (2 runs):") and xeon.count("**") == 2
    core = "| BatchNorm, LayerNorm, GroupNorm: fwd+bwd / torch.nn, every conv shape"
    assert f"{core} (both layouts) | <= 1.00 | 2 (24) | 0.90-0.90 | 2 of 2 runs |" in xeon
    assert f"{core} (both layouts) | <= 1.00 | 1 (12) | 1.20-1.20 | 0 of 1 runs |" in epyc
    assert "GPU:" in xeon and "GPU:" not in epyc
    one = report.targets_table([("a.json", intel[0]), ("b.json", intel[1])])
    assert "**" not in one and "| 2 of 2 runs |" in one


def test_targets_table_gpu_aim_per_norm_from_its_best_timed_run():
    """The GPU aim per norm: its lowest fwd or bwd copy fraction on the largest shapes, from
    a GPU-timed run before a newer host-timed one."""
    report = load_script("bench_report")
    big, small = (256, 64, 64, 64), (32, 64, 32, 32)
    gpu_timed = _run([_row("groupnorm", big, 1.0, device="cuda", fwd_copy_fraction=0.9,
                           bwd_copy_fraction=0.85),
                      _row("layernorm", big, 1.0, device="cuda", bwd_copy_fraction=0.5),
                      _row("layernorm", small, 1.0, device="cuda", bwd_copy_fraction=0.01)],
                     date="2026-01-01", timing="gpu")  # fmt: skip
    newer = _run([_row("groupnorm", big, 1.0, device="cuda", fwd_copy_fraction=0.2),
                  _row("frn", big, None, device="cuda", fwd_copy_fraction=0.75)],
                 date="2026-02-01")  # fmt: skip
    gpu = report.judge_gpu([("g.json", gpu_timed), ("n.json", newer)])
    got = {n["norm"]: (n["run"], round(n["value"], 2)) for n in gpu["norms"]}
    assert got == {"groupnorm": ("g.json", 0.85), "layernorm": ("g.json", 0.5),
                   "frn": ("n.json", 0.75)}  # fmt: skip
    assert sorted(n["norm"] for n in gpu["met"]) == ["frn", "groupnorm"]
    text = report.targets_table([("g.json", gpu_timed), ("n.json", newer)])
    assert "| 2 of 3 norms | layernorm 256x64x64x64 contiguous float32: 0.50 (`g.json`) |" in text


def _triton_ab_row(module, fmt, dtype, speedup, host, host_without, gpu_ms, gpu_ms_without):
    return {
        "module": module, "shape": [256, 64, 64, 64], "format": fmt, "dtype": dtype,
        "triton_fwd_fraction": 0.9, "triton_bwd_fraction": 0.8,
        "default_fwd_fraction": 0.3, "default_bwd_fraction": 0.2, "speedup_fwdbwd": speedup,
        "triton_host_us_fwdbwd": host, "default_host_us_fwdbwd": host_without,
        "triton_fwdbwd_ms": gpu_ms, "default_fwdbwd_ms": gpu_ms_without,
    }  # fmt: skip


def test_triton_ab_rows_are_served_where_both_the_gpu_and_the_call_win():
    report = load_script("bench_report")
    gpu_and_call = _triton_ab_row("frn", "contiguous", "float32", 2.0, 1000, 1500, 0.5, 1.0)
    host_bound = _triton_ab_row("frozenbatchnorm", "contiguous", "float32", 1.2, 1000, 600, 0.3,
                                0.36)  # fmt: skip
    slower_gpu = _triton_ab_row("rmsnorm", "contiguous", "float32", 0.9, 100, 100, 2.0, 1.8)
    assert report.triton_ab_wins(gpu_and_call)
    assert not report.triton_ab_wins(host_bound)  # 1000 us a call against 600
    assert not report.triton_ab_wins(slower_gpu)
    table = report.triton_ab_table([gpu_and_call, host_bound])
    lines = table.splitlines()
    assert lines[2].endswith("| 2.00x | 1000 / 1500 | 0.67 | yes |")
    assert lines[3].endswith("| 1000 / 600 | 1.67 | no |")


def test_the_zoos_triton_dispatch_follows_the_gpu_ab_data():
    """``_triton.ZOO_MEASURED`` serves exactly the (kind, layout, dtype) whose A/B rows on the
    docs page won (``bench_report.triton_ab_wins``); every pair it serves has such a row."""
    from normzoo.norms import _triton

    report = load_script("bench_report")
    data = json.loads((ROOT / "docs/data/gpu_triton_ab_h200.json").read_text())
    measured: dict[tuple[str, bool, torch.dtype], list[bool]] = {}
    for r in data["modules"]:
        key = (report.triton_kind(r), r["format"] == "contiguous", getattr(torch, r["dtype"]))
        measured.setdefault(key, []).append(report.triton_ab_wins(r))
    served = {
        (kind, contiguous, dtype)
        for (kind, contiguous), dtypes in _triton.ZOO_MEASURED.items()
        for dtype in dtypes
    }
    assert served <= set(measured), served - set(measured)  # nothing served unmeasured
    assert report.triton_kind({"module": "frn", "shape": [65536, 1024]}) == "frn_token"
    assert report.triton_kind({"module": "evonorms0", "shape": [8, 64, 4, 4]}) == "s0"
    for key, wins in measured.items():
        assert (key in served) == all(wins), key


def _plan_row(case: str, dtype: str, times: dict[str, float]) -> dict:
    """An A/B row of ``gpu_triton_ab.py`` with these fwd+bwd times per configuration key."""
    return {
        "case": case,
        "dtype": dtype,
        "configs": {k: {"fwdbwd_ms": t} for k, t in times.items()},
    }


def test_the_plan_pick_takes_each_layouts_configuration_that_wins_overall():
    """``gpu_triton_ab.py --pick``: for contiguous input and for rows (channels_last, batch
    norm's tokens) apart, the configuration with the lowest geometric mean of fwd+bwd time
    over the shipped plan's, the rows' tile taken in bytes (the same bytes in each dtype);
    the shipped plan (nothing) where none wins by the margin or a row lacks one."""
    from normzoo.norms import _triton

    ab = load_script("gpu_triton_ab")
    assert ab.shipped(False) in ab.CONFIGS  # each layout's shipped plan is measured
    assert ab.shipped(True, 4) in ab.CONFIGS and ab.shipped(True, 2) in ab.CONFIGS
    assert ab.shipped(True, 2)[1] == 2 * ab.shipped(True, 4)[1] == _triton.TILE_ROWS_BYTES // 2
    assert _triton.TWO_PHASE_LANE_ACC == 0 and _triton.TWO_PHASE_LANE_ACC_ROWS == 2
    rows = [
        # rows: shipped 16 KB tiles with lanes; without lanes wins in both dtypes (the same
        # 16 KB: 4096 float32, 8192 bfloat16 values); 32 KB tiles, measured in float32 only
        _plan_row("bn_channels_last", "float32",
                  {"16x4096x8x1x2": 1.0, "16x4096x8x1x0": 0.8, "16x8192x8x1x0": 0.5}),
        _plan_row("bn_tokens", "bfloat16", {"16x8192x8x1x2": 1.0, "16x8192x8x1x0": 0.85}),
        _plan_row("bn_contiguous", "float32", {"16x4096x8x1x0": 1.0, "16x8192x8x1x0": 0.9}),
        _plan_row("ln_tokens", "float32", {"16x4096x8x1x0": 0.5}),  # the token kernels': not
    ]  # fmt: skip
    data = {"rows": rows}
    assert ab.pick(data) == {
        "TILE_ROWS_BYTES": 16384, "TWO_PHASE_LANE_ACC_ROWS": 0, "TILE": 8192,
        "TWO_PHASE_LANE_ACC": 0,
    }  # fmt: skip
    rows[2]["configs"]["16x8192x8x1x0"]["fwdbwd_ms"] = 0.98  # within the margin: kept
    rows[1]["configs"]["16x8192x8x1x0"]["fwdbwd_ms"] = 1.3  # a loss in bfloat16: overall
    assert ab.pick(data) == {}
    rows[1]["configs"]["16x8192x8x1x0"]["fwdbwd_ms"] = 0.5
    del rows[1]["configs"]["16x8192x8x1x0"]  # a row lacks it: never chosen
    assert ab.pick(data) == {}


def test_the_pick_reaches_the_bench_as_its_triton_knobs(bench, tmp_path, monkeypatch):
    """``--pick FILE`` prints the plan as ``NAME=INT``; ``bench.py --triton-knobs`` sets those
    knobs for its run (and records them), and names what it cannot set."""
    from normzoo.norms import _triton

    rows = [_plan_row("bn_contiguous", "float32", {"16x4096x8x1x0": 2.0, "16x4096x8x1x2": 1.0})]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"rows": rows}))
    script = str(ROOT / "scripts" / "gpu_triton_ab.py")
    run = subprocess.run([sys.executable, script, "--pick", str(path)], capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    assert run.stdout.split() == ["TILE=4096", "TWO_PHASE_LANE_ACC=2"]
    for name in bench.TRITON_KNOBS:
        monkeypatch.setattr(_triton, name, getattr(_triton, name))  # restored after
    knobs = [*run.stdout.split(), "PROGRAMS_PER_SM=64"]
    assert bench.set_triton_knobs(knobs) == {
        "TILE": 4096, "TWO_PHASE_LANE_ACC": 2, "PROGRAMS_PER_SM": 64,
    }  # fmt: skip
    assert (_triton.PROGRAMS_PER_SM, _triton.TWO_PHASE_LANE_ACC) == (64, 2)
    assert bench.set_triton_knobs(["TOKEN_ACC_ROWS=0"]) == {"TOKEN_ACC_ROWS": 0}
    assert _triton.TOKEN_ACC_ROWS is False
    for bad in ("TILE", "TILE=big", "MIN_NUMEL=1"):
        with pytest.raises(SystemExit, match="NAME=INT"):
            bench.set_triton_knobs([bad])


def test_the_plan_section_marks_each_cases_shipped_plan():
    """``bench_report.triton_plan_table`` on the committed A/B files: every case's rows, one
    plan marked shipped (fwd+bwd ratio 1.00 to itself), torch's row last; the plans the
    dispatch ships were measured, and in the A/B won (``--pick`` keeps them)."""
    report = load_script("bench_report")
    ab = load_script("gpu_triton_ab")
    for name in ("gpu_triton_plan_h200.json", "gpu_triton_tokens_h200.json"):
        data = json.loads((ROOT / "docs/data" / name).read_text())
        lines = report.triton_plan_table(data["rows"]).splitlines()[2:]
        for r in data["rows"]:
            head = f"| {r['case']} | {'x'.join(map(str, r['shape']))} | {r['dtype']} |"
            mine = [line for line in lines if line.startswith(head)]
            assert len(mine) == len(r["configs"]) + 1
            (shipped,) = [line for line in mine if "(shipped)" in line]
            assert shipped.endswith("| 1.00 |") and "torch (" in mine[-1]
        assert ab.pick(data) == {}
