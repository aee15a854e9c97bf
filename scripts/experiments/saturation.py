"""Experiment 3: saturation (the study notebook: tanh(5) ≈ tanh(40)).

The study notebook's first demo: ``tanh(5) = 0.9999`` and ``tanh(40) = 1.0``, so inputs
far from zero all look alike to the activation and its gradient vanishes there; normalizing
between layers keeps the inputs in the activation's sensitive range. The BN paper (Fig. 1,
Sec. 4.2.2) plots the 15/50/85th percentiles of a sigmoid's input over training and reports
that with sigmoid activations Inception never left chance accuracy while BN-x5-Sigmoid
reached 69.8%. Here: a deep tanh MLP on digits with and without BatchNorm, at a moderate and
a high learning rate; the diagnostics callback records every tanh's input distribution and
the fraction beyond ``atanh(0.99) ≈ 2.65`` (saturated: ``|tanh| > 0.99``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from docsgen import plots
from docsgen.markdown import table

from experiments import common
from experiments.base import Experiment
from experiments.common import Row, Scale

NORMS = ["identity", "batchnorm"]
FIELDS = [
    "scale",
    "norm",
    "lr",
    "seed",
    "step",
    "layer",
    "mean",
    "std",
    "q02",
    "q15",
    "q50",
    "q85",
    "q98",
    "saturated_frac",
    "test_acc",
]


class Saturation(Experiment):
    name = "saturation"
    title = "Saturation"
    page = "saturation.md"
    preset = "saturation"
    fields = FIELDS
    scales = {  # noqa: RUF012
        "quick": Scale(
            "quick",
            seeds=(0, 1, 2),
            settings={"lrs": (0.05, 0.5), "epochs": 8, "every": 10, "depth": 6, "width": 128},
        ),
        "full": Scale(
            "full",
            seeds=(0, 1, 2, 3, 4),
            settings={
                "lrs": (0.05, 0.2, 0.5),
                "epochs": 30,
                "every": 20,
                "depth": 10,
                "width": 256,
            },
        ),
    }

    def invocations(self, scale: Scale) -> list[list[str]]:
        widths = "[" + ",".join([str(scale["width"])] * scale["depth"]) + "]"
        return [
            [
                f"experiment={self.preset}",
                f"norm={norm}",
                f"optimizer.lr={common.joined(scale['lrs'])}",
                f"model.widths={widths}",
                f"trainer.max_epochs={scale['epochs']}",
                f"callbacks.diagnostics.every_n_steps={scale['every']}",
                f"seed={common.joined(scale.seeds)}",
            ]
            for norm in ("none", "bn")
        ]

    def collect_run(self, run_dir: Path) -> list[Row]:
        m = common.metrics(run_dir)
        base = {
            "norm": common.canonical(m["norm"]),
            "lr": float(m["lr"]),
            "seed": m["seed"],
            "test_acc": m["test_acc"],
        }
        layers: dict[str, int] = {}
        rows = []
        for r in common.read_csv(run_dir / "diagnostics_activations.csv"):
            index = layers.setdefault(r["layer"], len(layers))
            rows.append({**base, **r, "layer": index + 1})
        return rows

    # -- docs -------------------------------------------------------------------------------
    def figures(self, rows: list[Row]) -> list[Path]:
        lrs = sorted({float(r["lr"]) for r in rows})
        fig, axes = plots.subplots(ncols=len(lrs), nrows=2, size=(3.8, 2.9))
        for col, lr in enumerate(lrs):
            for row_i, norm in enumerate(NORMS):
                ax = axes[row_i * len(lrs) + col]
                sel = [r for r in rows if float(r["lr"]) == lr and r["norm"] == norm]
                for (layer,), pts in sorted(common.group(sel, "layer").items()):
                    by_step = common.group(pts, "step")
                    steps = sorted(s for (s,) in by_step)
                    ax.plot(
                        steps,
                        [
                            100 * common.mean_std(p["saturated_frac"] for p in by_step[(s,)])[0]
                            for s in steps
                        ],
                        label=f"layer {layer}",
                        lw=1,
                        color=plots.plt.cm.viridis(layer / 7),
                    )
                ax.set_title(f"{common.label(norm)}, lr {lr:g}", fontsize=9)
                ax.set_ylim(-3, 103)
                ax.grid(alpha=0.3)
                ax.set_xlabel("step")
                ax.set_ylabel("saturated tanh inputs (%)")
        axes[0].legend(fontsize=6)
        paths = [plots.save(fig, self.figure_path("fraction"))]

        # The BN paper's Fig. 1(b, c): percentiles of one activation's input over training.
        fig, axes = plots.subplots(ncols=len(NORMS), nrows=len(lrs), size=(3.8, 2.8))
        last = max(int(r["layer"]) for r in rows)
        for i, lr in enumerate(lrs):
            for j, norm in enumerate(NORMS):
                ax = axes[i * len(NORMS) + j]
                sel = [
                    r
                    for r in rows
                    if float(r["lr"]) == lr
                    and r["norm"] == norm
                    and int(r["layer"]) == last
                    and r["seed"] == min(int(x["seed"]) for x in rows)
                ]
                sel.sort(key=lambda r: r["step"])
                steps = [r["step"] for r in sel]
                ax.fill_between(
                    steps, [r["q02"] for r in sel], [r["q98"] for r in sel], alpha=0.15, color="C0"
                )
                ax.fill_between(
                    steps, [r["q15"] for r in sel], [r["q85"] for r in sel], alpha=0.35, color="C0"
                )
                ax.plot(steps, [r["q50"] for r in sel], color="C0", lw=1)
                for y in (-2.65, 2.65):
                    ax.axhline(y, color="k", ls="--", lw=0.6)
                ax.set_title(f"{common.label(norm)}, lr {lr:g}: layer {last}", fontsize=9)
                ax.set_xlabel("step")
                ax.set_ylabel("tanh input")
                ax.grid(alpha=0.3)
        paths.append(plots.save(fig, self.figure_path("percentiles")))
        return paths

    @staticmethod
    def final(rows: list[Row]) -> list[Row]:
        """The last recorded step of each run."""
        last = {}
        for r in rows:
            key = (r["norm"], r["lr"], r["seed"])
            last[key] = max(last.get(key, 0), int(r["step"]))
        return [r for r in rows if int(r["step"]) == last[(r["norm"], r["lr"], r["seed"])]]

    def table(self, rows: list[Row]) -> str:
        final = self.final(rows)
        layers = sorted({int(r["layer"]) for r in final})
        body = []
        for (norm, lr), sel in sorted(common.group(final, "norm", "lr").items(), key=str):
            by_layer = common.group(sel, "layer")
            acc = {(r["seed"]): r["test_acc"] for r in sel}
            body.append(
                [
                    common.label(str(norm)),
                    f"{lr:g}",
                    *(
                        common.pm((r["saturated_frac"] for r in by_layer[(k,)]), 100, 0)
                        for k in layers
                    ),
                    common.pm(acc.values(), 100, 1),
                ]
            )
        return (
            "Saturated tanh inputs (%, `|x| > 2.65`) per hidden layer at the end of training, "
            "and test accuracy (%), mean ± std over seeds:\n\n"
            + table(["norm", "lr", *(f"layer {k}" for k in layers), "test acc"], body)
        )

    def summary(self, rows: list[Row]) -> str:
        """Per learning rate: the final saturated fraction (all layers) and test accuracy."""
        final = self.final(rows)
        lines = []
        for (lr,), sel in sorted(common.group(final, "lr").items()):
            parts = []
            for norm in NORMS:
                mine = [r for r in sel if r["norm"] == norm]
                if not mine:
                    continue
                sat = common.mean_std(r["saturated_frac"] for r in mine)[0]
                peak = max(float(r["saturated_frac"]) for r in mine)
                acc = common.mean_std({r["seed"]: r["test_acc"] for r in mine}.values())[0]
                parts.append(
                    f"{common.label(norm)} {100 * sat:.0f}% saturated on average (worst layer "
                    f"and seed {100 * peak:.0f}%), test accuracy {100 * acc:.1f}%"
                )
            lines.append(f"- lr {lr:g}, end of training: " + "; ".join(parts) + ".")
        return "\n".join(lines) + "\n"

    def blocks(self, rows: list[Row]) -> dict[str, Callable[[], str]]:
        return {
            f"{self.name}/table": lambda: self.table(rows) if rows else "Not run yet.\n",
            f"{self.name}/summary": lambda: self.summary(rows) if rows else "Not run yet.\n",
        }

    def norm_result(self, rows: list[Row], norm: str) -> str | None:
        final = [r for r in self.final(rows) if r["norm"] == norm] if rows else []
        if not final:
            return None
        parts = []
        for (lr,), sel in sorted(common.group(final, "lr").items()):
            sat = common.mean_std(r["saturated_frac"] for r in sel)[0]
            acc = common.mean_std({r["seed"]: r["test_acc"] for r in sel}.values())[0]
            parts.append(f"lr {lr:g}: {100 * sat:.0f}% saturated, test acc {100 * acc:.1f}%")
        return "- deep tanh MLP on digits, end of training: " + "; ".join(parts) + "\n"


EXPERIMENT = Saturation()
