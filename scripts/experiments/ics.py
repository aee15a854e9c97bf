"""Experiment 4: internal covariate shift and smoothness (Santurkar et al. 2018).

Santurkar, Tsipras, Ilyas and Madry ("How Does Batch Normalization Help Optimization?",
NeurIPS 2018): (1) a VGG with BatchNorm followed by "noisy" BN (time-varying, non-zero-mean
noise after each BN layer) trains about as well as with plain BN although its layer inputs
shift far more (Fig. 2); (2) measured as ``||G - G'||`` and ``cos(G, G')`` (Sec. 2.2), BN
networks do not show less internal covariate shift, often more (Fig. 3, 25-layer deep
linear network and VGG; cosines near 0 for both); (3) along the gradient, BN makes the loss
landscape smoother: less variation of the loss, more predictive gradients, a smaller
effective beta-smoothness (Fig. 4). Here: a ReLU MLP (four hidden layers) on digits with no
norm, BN, and noisy BN, measured by the ``normzoo.diagnostics`` callback during training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from docsgen import plots
from docsgen.markdown import table

from experiments import common
from experiments.base import Experiment
from experiments.common import Row, Scale

NORMS = ["identity", "batchnorm", "noisybn"]
NORM_OVERRIDES = {"identity": "none", "batchnorm": "bn", "noisybn": "noisybn"}
LANDSCAPE = ("loss_variation", "grad_predictiveness", "beta_smoothness")
SUMMARY_NAMES = {
    "loss_variation": "loss variation",
    "grad_predictiveness": "gradient change (smaller: more predictive)",
    "beta_smoothness": "effective β-smoothness",
}
FIELDS = [
    "scale",
    "kind",
    "norm",
    "seed",
    "step",
    "layer",
    "ics_l2",
    "ics_cos",
    "ics_rel",
    "grad_norm",
    "loss",
    *LANDSCAPE,
    "train_acc",
    "test_acc",
]


class ICS(Experiment):
    name = "ics"
    title = "Internal covariate shift"
    page = "ics.md"
    preset = "ics"
    fields = FIELDS
    scales = {  # noqa: RUF012
        "quick": Scale(
            "quick",
            seeds=(0, 1, 2),
            settings={"epochs": 6, "every": 20, "depth": 4, "width": 64, "lr": 0.1},
        ),
        "full": Scale(
            "full",
            seeds=(0, 1, 2, 3, 4),
            settings={"epochs": 30, "every": 50, "depth": 4, "width": 128, "lr": 0.1},
        ),
    }

    def invocations(self, scale: Scale) -> list[list[str]]:
        widths = "[" + ",".join([str(scale["width"])] * scale["depth"]) + "]"
        # The measurements make the BN runs the slower ones: deal norms x seeds over 2 jobs.
        return [
            [
                f"experiment={self.preset}",
                f"norm={common.joined(NORM_OVERRIDES[n] for n in NORMS)}",
                f"optimizer.lr={scale['lr']:g}",
                f"model.widths={widths}",
                f"trainer.max_epochs={scale['epochs']}",
                f"callbacks.diagnostics.every_n_steps={scale['every']}",
                f"seed={common.joined(seeds)}",
            ]
            for seeds in common.halves(scale.seeds)
        ]

    def collect_run(self, run_dir: Path) -> list[Row]:
        m = common.metrics(run_dir)
        base = {"norm": common.canonical(m["norm"]), "seed": m["seed"]}
        log = common.step_log(run_dir)
        train_acc = [float(r["train/acc_epoch"]) for r in log if "train/acc_epoch" in r]
        rows: list[Row] = [
            {
                **base,
                "kind": "run",
                "test_acc": m["test_acc"],
                "train_acc": train_acc[-1] if train_acc else "",
                "steps": m["steps"],
            }
        ]
        layers: dict[str, int] = {}
        for r in common.read_csv(run_dir / "diagnostics_ics.csv"):
            index = layers.setdefault(r["layer"], len(layers))
            rel = r["ics_l2"] / r["grad_norm"] if r.get("grad_norm") else float("nan")
            rows.append({**base, "kind": "ics", **r, "layer": index + 1, "ics_rel": rel})
        for r in common.read_csv(run_dir / "diagnostics_landscape.csv"):
            rows.append({**base, "kind": "landscape", **r})
        return rows

    # -- docs -------------------------------------------------------------------------------
    def figures(self, rows: list[Row]) -> list[Path]:
        ics_rows = [r for r in rows if r["kind"] == "ics"]
        fig, (ax1, ax2) = plots.subplots(ncols=2, size=(4.4, 3.3))
        layers = sorted({int(r["layer"]) for r in ics_rows})
        width = 0.8 / len(NORMS)
        for i, norm in enumerate(NORMS):
            sel = common.group([r for r in ics_rows if r["norm"] == norm], "layer")
            if not sel:
                continue
            xs = [k + (i - 1) * width for k in layers]
            for ax, key in ((ax1, "ics_l2"), (ax2, "ics_cos")):
                stats = [common.mean_std(r[key] for r in sel.get((k,), [])) for k in layers]
                ax.bar(
                    xs,
                    [s[0] for s in stats],
                    width,
                    yerr=[s[1] for s in stats],
                    color=plots.color(norm),
                    label=common.label(norm),
                    capsize=1,
                )
        ax1.set_yscale("log")
        ax1.set_title("ICS: ||G - G'|| (mean over steps, seeds)", fontsize=9)
        ax2.set_title("ICS: cos(G, G') (1 = no shift)", fontsize=9)
        for ax in (ax1, ax2):
            ax.set_xlabel("layer")
            ax.set_xticks(layers)
            ax.grid(alpha=0.3, axis="y")
        ax1.legend(fontsize=7)
        paths = [plots.save(fig, self.figure_path("ics"))]

        land = [r for r in rows if r["kind"] == "landscape"]
        fig, axes = plots.subplots(ncols=3, size=(3.6, 3.0))
        titles = {
            "loss_variation": "loss variation along -grad",
            "grad_predictiveness": "gradient change ||Δ grad||",
            "beta_smoothness": "effective β-smoothness",
        }
        for ax, key in zip(axes, LANDSCAPE, strict=True):
            for norm in NORMS:
                by_step = common.group([r for r in land if r["norm"] == norm], "step")
                steps = sorted(s for (s,) in by_step)
                if not steps:
                    continue
                stats = [common.mean_std(r[key] for r in by_step[(s,)]) for s in steps]
                m = [s[0] for s in stats]
                sd = [s[1] for s in stats]
                ax.plot(steps, m, color=plots.color(norm), label=common.label(norm), lw=1)
                ax.fill_between(
                    steps,
                    [a - b for a, b in zip(m, sd, strict=True)],
                    [a + b for a, b in zip(m, sd, strict=True)],
                    color=plots.color(norm),
                    alpha=0.2,
                )
            ax.set_yscale("log")
            ax.set_title(titles[key], fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        paths.append(plots.save(fig, self.figure_path("landscape")))
        return paths

    def table(self, rows: list[Row]) -> str:
        body = []
        for norm in NORMS:
            sel = [r for r in rows if r["norm"] == norm]
            if not sel:
                continue
            runs = [r for r in sel if r["kind"] == "run"]
            ics_rows = [r for r in sel if r["kind"] == "ics" and int(r["layer"]) > 1]
            land = [r for r in sel if r["kind"] == "landscape"]
            body.append(
                [
                    common.label(norm),
                    common.pm((r["train_acc"] for r in runs if "train_acc" in r), 100, 1),
                    common.pm((r["test_acc"] for r in runs), 100, 1),
                    f"{common.mean_std(r['ics_l2'] for r in ics_rows)[0]:.3g}",
                    f"{common.mean_std(r['ics_rel'] for r in ics_rows)[0]:.3g}",
                    f"{common.mean_std(r['ics_cos'] for r in ics_rows)[0]:.2f}",
                    *(f"{common.mean_std(r[k] for r in land)[0]:.3g}" for k in LANDSCAPE),
                ]
            )
        return (
            "Means over seeds, measurement steps and (for ICS) layers 2 and deeper (layer 1 "
            "has no preceding layer, so its ICS is 0 by definition):\n\n"
            + table(
                [
                    "norm",
                    "train acc (%)",
                    "test acc (%)",
                    "‖G−G′‖",
                    "‖G−G′‖ / ‖G‖",
                    "cos(G, G′)",
                    "loss variation",
                    "gradient change",
                    "β-smoothness",
                ],
                body,
            )
        )

    def summary(self, rows: list[Row]) -> str:
        """BN and noisy BN relative to no norm, on each measure."""

        def mean(norm: str, kind: str, key: str) -> float:
            sel = [
                r
                for r in rows
                if r["norm"] == norm
                and r["kind"] == kind
                and (kind != "ics" or int(r["layer"]) > 1)
            ]
            return common.mean_std(r[key] for r in sel)[0]

        lines = []
        for norm in ("batchnorm", "noisybn"):
            if not any(r["norm"] == norm for r in rows):
                continue
            parts = [
                f"cos(G, G′) {mean(norm, 'ics', 'ics_cos'):.2f} vs "
                f"{mean('identity', 'ics', 'ics_cos'):.2f}",
                f"‖G−G′‖/‖G‖ {mean(norm, 'ics', 'ics_rel'):.3g} vs "
                f"{mean('identity', 'ics', 'ics_rel'):.3g}",
            ]
            for key in LANDSCAPE:
                ratio = mean(norm, "landscape", key) / mean("identity", "landscape", key)
                parts.append(f"{SUMMARY_NAMES[key]} ×{ratio:.2g}")
            parts.append(
                f"test accuracy {100 * mean(norm, 'run', 'test_acc'):.1f}% vs "
                f"{100 * mean('identity', 'run', 'test_acc'):.1f}%"
            )
            lines.append(f"- {common.label(norm)} vs no norm: " + "; ".join(parts) + ".")
        return "\n".join(lines) + "\n"

    def blocks(self, rows: list[Row]) -> dict[str, Callable[[], str]]:
        return {
            f"{self.name}/table": lambda: self.table(rows) if rows else "Not run yet.\n",
            f"{self.name}/summary": lambda: self.summary(rows) if rows else "Not run yet.\n",
        }

    def norm_result(self, rows: list[Row], norm: str) -> str | None:
        sel = [r for r in rows if r["norm"] == norm]
        if not sel:
            return None
        ics_rows = [r for r in sel if r["kind"] == "ics" and int(r["layer"]) > 1]
        land = [r for r in sel if r["kind"] == "landscape"]
        return (
            f"- ReLU MLP on digits: mean ‖G−G′‖ "
            f"{common.mean_std(r['ics_l2'] for r in ics_rows)[0]:.3g}, cos(G, G′) "
            f"{common.mean_std(r['ics_cos'] for r in ics_rows)[0]:.2f}, effective β-smoothness "
            f"{common.mean_std(r['beta_smoothness'] for r in land)[0]:.3g}\n"
        )


EXPERIMENT = ICS()
