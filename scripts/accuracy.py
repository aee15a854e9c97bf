"""Numerical accuracy: every norm's output and input gradient against its float64 math, on
inputs whose mean is large against their spread (where a one-pass variance cancels).

For each registered norm, conv inputs ``(N, C, H, W)`` in both layouts and tokens ``(N, C)``,
and each input mean (standard deviation 1), one training-mode forward and backward (a fixed
random output gradient) gives the relative error ``max|a - b| / max|b|`` of the output and of
the input gradient, for

* ``fast``: normzoo's default path in float32 (what a model runs),
* ``reference``: normzoo's reference math (``impl="reference"``) in float32,
* ``torch.nn``: the torch.nn equivalent in float32, where one exists,

against normzoo's reference math in float64 on the same float32 input and parameters. The
page reports the larger of the two errors per cell.

    python scripts/accuracy.py                                    # print the table
    python scripts/accuracy.py --json docs/data/accuracy.json --out docs/numerics.md \
        --plot docs/img/accuracy.png
    python scripts/accuracy.py --render docs/data/accuracy.json --out docs/numerics.md \
        --plot docs/img/accuracy.png
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from bench import machine, norm_kwargs, torch_equivalent
from torch import nn

import normzoo

#: Input shapes: a small conv input (below the native kernels' thresholds: torch's kernels),
#: a mid-sized one (the native kernels) and tokens.
SHAPES = ((8, 16, 8, 8), (16, 32, 16, 16), (256, 256))
MEANS = (0.0, 100.0, 1000.0, 10000.0)
LAYOUTS = ("contiguous", "channels_last")
#: Norms that compare no math here (a pass-through; SyncBatchNorm is BatchNorm in one process).
SKIP = ("identity", "syncbatchnorm")
PATHS = ("fast", "reference", "torch")


def _build(name: str, c: int, n: int, token: bool, impl: str) -> nn.Module | None:
    """The norm for ``c`` channels as the benchmark builds it (:func:`bench.norm_kwargs`: the
    token form for ``(N, C)``), Ghost BN with two virtual batches of the ``n`` samples;
    ``None`` where it takes no such input. Unlike the benchmark's, errors are raised."""
    kwargs = norm_kwargs(name, token, impl)
    if kwargs is None:
        return None
    if normzoo.info(name).name == "ghostbatchnorm":
        kwargs["virtual_batch_size"] = max(1, n // 2)
    return normzoo.create(name, c, **kwargs)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item()
    return (a.double() - b).abs().max().item() / scale if scale > 0 else float("nan")


def accuracy_row(
    name: str,
    shape: tuple[int, ...],
    layout: str,
    mean: float,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any] | None:
    """The errors of one case (``None`` where the norm takes no such input) on ``device``
    (the float64 math on the same device)."""
    name = normzoo.info(name).name
    token = len(shape) == 2
    if token and layout != "contiguous":
        return None
    torch.manual_seed(seed)
    n, c = shape[:2]
    fast = _build(name, c, n, token, "fast")
    if fast is None:
        return None
    with torch.no_grad():  # non-trivial parameters, the same in every model
        for p in fast.parameters():
            p.add_(0.1 * torch.randn_like(p))
    models: dict[str, nn.Module | None] = {
        "fast": fast,
        "reference": _build(name, c, n, token, "reference"),
        "torch": torch_equivalent(name, fast, c, token),
    }
    exact = _build(name, c, n, token, "reference").double()
    if models["torch"] is not None:
        models["torch"].eps = fast.eps  # (torch's RMSNorm defaults to float32's epsilon)
        theirs = models["torch"].state_dict()
        if "bias" not in theirs and getattr(fast, "bias", None) is not None:
            with torch.no_grad():  # torch's RMSNorm has no bias: compare with ours at zero
                fast.bias.zero_()
        with torch.no_grad():  # our parameters and running statistics in torch's module
            for key, value in fast.state_dict().items():
                if key in theirs:
                    theirs[key].copy_(value)
    state = fast.state_dict()
    for model in (models["reference"], exact):
        model.load_state_dict(state)
    for model in (*models.values(), exact):
        if model is not None:
            model.to(device)
    x = (mean + torch.randn(shape)).to(device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn(shape, dtype=torch.float64).to(device)
    x64 = x.double().requires_grad_(True)
    y64 = exact(x64)
    (dx64,) = torch.autograd.grad(y64, x64, dy)
    row: dict[str, Any] = {"norm": name, "shape": list(shape), "layout": layout, "mean": mean}
    for path, model in models.items():
        if model is None:
            row[f"{path}_y"] = row[f"{path}_dx"] = None
            continue
        xi = x.clone().requires_grad_(True)
        y = model.train()(xi)  # (FrozenBatchNorm's torch equivalent stays in eval)
        (dx,) = torch.autograd.grad(y, xi, dy.float())
        row[f"{path}_y"], row[f"{path}_dx"] = _rel(y, y64), _rel(dx, dx64)
        if path == "torch":
            row["torch_module"] = type(model).__name__
    return row


def run(
    norms: list[str],
    shapes: tuple[tuple[int, ...], ...],
    means: tuple[float, ...],
    command: str = "python scripts/accuracy.py",
    device: str = "cpu",
) -> dict[str, Any]:
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a native build's fallback warning
        for shape in shapes:
            for layout in LAYOUTS:
                for name in norms:
                    for mean in means:
                        row = accuracy_row(name, shape, layout, mean, device=device)
                        if row is not None:
                            rows.append(row)
    meta = {
        "torch": torch.__version__,
        "machine": (
            torch.cuda.get_device_name(device) if device.startswith("cuda") else machine()["cpu"]
        ),
        "device": device,
        "threads": torch.get_num_threads(),
        "command": command,
    }
    return {"meta": meta, "rows": rows}


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    if value != value:  # nan: an exact output of zeros
        return "n/a"
    text = f"{value:.0e}"
    return f"**{text}**" if value >= 1e-2 else text


INTRO = """# Numerical accuracy

Normalization subtracts a mean and divides by a standard deviation, so its float32 error
depends on how large the mean is against the spread: `x - mean` keeps about
`log2(std / |mean|)` fewer bits, and a variance taken in one pass as `E[x^2] - E[x]^2`
cancels catastrophically (its error grows with `(mean / std)^2`). Inputs with a large mean are
common: a first layer after unnormalized data, or activations that drift in training.

Each cell is the relative error `max|a - b| / max|b|` of a norm's output or input gradient,
the larger of the two, after one training-mode forward and backward in float32, against
normzoo's reference math in float64 on the same input (for BatchNorm, LayerNorm, InstanceNorm
and GroupNorm the same numbers as torch's float64 kernels). **fast** is normzoo's default
path, **ref** its reference math in float32 (the paper's formula with a two-pass variance),
**torch** the torch.nn equivalent where one exists; errors of 1e-2 or more are in bold.
float32 resolves about 6e-8 relative to the mean, so at mean 10000 and std 1 an error of a
few 1e-4 is what any float32 computation reaches.

What the tables show (torch 2.13, CPU):

* **The core norms** (BatchNorm, LayerNorm, InstanceNorm, GroupNorm) run at torch.nn's float32
  error or better on every shape, layout and mean, and near the reference math's: about 2e-5
  at mean 1000 and 2e-4 at mean 10000, the limit set by `x - mean` in float32.
* **torch.nn's channels_last GroupNorm on the CPU** (and the channels-first LayerNorm it
  computes) takes the one-pass variance: 1e-3 to 6e-3 at mean 100, 0.1 to 1e6 at mean 1000.
  normzoo does not call that kernel in float32: its native operator reads channels_last in
  place with a stable variance, and a machine without the operator library runs torch's
  contiguous kernel on a copy (half-precision LayerNorm keeps torch's kernel, 2-4.5x faster
  there; half precision cannot hold the means that break it).
* **BatchNorm on channels_last below the native kernels' sizes** (64K elements; Batch Renorm
  and Ghost BN, which call the kernels through Python, 256K) runs torch's channels_last
  batch-norm kernel, which folds the mean into an affine map: 4-10x the reference math's
  error (up to 2e-3 at mean 10000), as torch.nn.
* **EvoNorm-B0 and EvoNorm-S0** do not subtract the mean in their output, so float32 can
  give them to about 1e-6 at every mean, and normzoo's kernels do. (Until the sixteenth
  session their native backward took the variance's gradient `2 (x - mean) / L` against a
  float32 mean that float partial sums had left up to 5e-4 off at mean 10000: input gradients
  4e-4 off. The mean now comes from shifted sums and the gradient is taken against the exact
  mean.)
* **Degenerate statistics**: FRN and EvoNorm-B0 on tokens take a statistic of one value per
  (sample, channel). Their exact input gradient is then nearly zero (FRN:
  `eps / (x^2 + eps)^(3/2)`), so rounding shows as a large relative error: for FRN most in
  the reference math (the formula, differentiated by autograd), for EvoNorm-B0 in both paths.
"""


def render(result: dict[str, Any]) -> str:
    meta, rows = result["meta"], result["rows"]
    means = sorted({r["mean"] for r in rows})
    lines = [INTRO]
    lines.append(f"- command: `{meta['command']}`")
    lines.append(f"- machine: {meta['machine']}, {meta['threads']} threads, torch {meta['torch']}")
    lines.append("- data: [`docs/data/accuracy.json`](data/accuracy.json)\n")
    lines.append("![Error against the input's mean](img/accuracy.png)\n")
    groups: dict[tuple[tuple[int, ...], str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((tuple(r["shape"]), r["layout"]), []).append(r)
    for (shape, layout), group in groups.items():
        kind = "tokens" if len(shape) == 2 else layout
        lines.append(f"## {'x'.join(map(str, shape))}, {kind}\n")
        header = ["norm", "torch.nn"]
        for m in means:
            header += [f"mean {m:g}: fast", "ref", "torch"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("| --- | --- |" + " ---: |" * (3 * len(means)))
        by_norm: dict[str, dict[float, dict[str, Any]]] = {}
        for r in group:
            by_norm.setdefault(r["norm"], {})[r["mean"]] = r
        for name, cells in by_norm.items():
            module = next((c.get("torch_module") for c in cells.values()), None)
            out = [name, f"`{module}`" if module else "-"]
            for m in means:
                r = cells.get(m)
                for path in PATHS:
                    if r is None or r[f"{path}_y"] is None:
                        out.append("-")
                    else:
                        out.append(_cell(_worst(r[f"{path}_y"], r[f"{path}_dx"])))
            lines.append("| " + " | ".join(out) + " |")
        lines.append("")
    return "\n".join(lines)


#: The figure: (norm, path, label, style) on the mid-sized channels_last input.
PLOT_LINES = (
    ("groupnorm", "torch", "nn.GroupNorm", "C3-o"),
    ("groupnorm", "fast", "normzoo groupnorm", "C0-o"),
    ("layernorm", "fast", "normzoo layernorm", "C0--s"),
    ("batchnorm", "torch", "nn.BatchNorm2d", "C1-^"),
    ("batchnorm", "fast", "normzoo batchnorm", "C2-^"),
    ("evonorms0", "fast", "normzoo evonorms0", "C4-d"),
)


def plot(result: dict[str, Any], path: Path, shape: tuple[int, ...] = SHAPES[1]) -> None:
    """Error against the input's mean, channels_last ``shape``: torch.nn's channels_last
    GroupNorm next to normzoo's norms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        r
        for r in result["rows"]
        if tuple(r["shape"]) == tuple(shape) and r["layout"] == "channels_last"
    ]
    means = sorted({r["mean"] for r in rows})
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, path_, label, style in PLOT_LINES:
        by_mean = {r["mean"]: r for r in rows if r["norm"] == name}
        ys = [
            _worst(by_mean[m][f"{path_}_y"], by_mean[m][f"{path_}_dx"]) if m in by_mean else None
            for m in means
        ]
        if all(y is not None for y in ys):
            ax.plot(range(len(means)), ys, style, label=label)
    ax.set_yscale("log")
    ax.set_xticks(range(len(means)), [f"{m:g}" for m in means])
    ax.set_xlabel("input mean (std 1)")
    ax.set_ylabel("relative error vs float64 (max of y, dx)")
    ax.set_title(f"{'x'.join(map(str, shape))}, channels_last, float32, CPU")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _worst(a: float, b: float) -> float:
    if a != a or b != b:
        return a if b != b else b
    return max(a, b)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--norms", nargs="*", default=None)
    parser.add_argument("--shapes", nargs="*", default=None, help="e.g. 8,16,8,8 512,64")
    parser.add_argument("--means", nargs="*", type=float, default=list(MEANS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--render", type=Path, help="render this JSON instead of measuring")
    parser.add_argument("--out", type=Path, help="write the markdown page here")
    parser.add_argument("--plot", type=Path, help="write the figure here (PNG)")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads(args.render.read_text())
    else:
        torch.set_num_threads(args.threads)
        norms = [normzoo.info(n).name for n in args.norms] if args.norms else None
        norms = norms or [n for n in normzoo.available() if n not in SKIP]
        shapes = (
            tuple(tuple(int(v) for v in s.split(",")) for s in args.shapes)
            if args.shapes
            else SHAPES
        )
        given = sys.argv[1:] if argv is None else argv
        command = " ".join(["python scripts/accuracy.py", *given])
        result = run(norms, shapes, tuple(args.means), command, args.device)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    page = render(result)
    if args.plot:
        plot(result, args.plot)
    if args.out:
        args.out.write_text(page)
    else:
        print(page)
    return result


if __name__ == "__main__":
    main()
