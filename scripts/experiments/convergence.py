"""Experiment 2: convergence speed and learning-rate range (Ioffe & Szegedy 2015).

The BN paper (Sec. 4.2, Fig. 2, Table 2): Inception reached 72.2% top-1 in 31.0M steps;
BN-Baseline (BN added, nothing else changed) matched it in 13.3M steps, BN-x5 (5x the
learning rate) in 2.1M steps: "14 times fewer"; BN-x30 (30x the rate) reached
72.2% in 2.7M steps and a maximum of 74.8%. Here: the training steps to reach a target
validation accuracy, with and without BatchNorm, over a log grid of learning rates (SGD with
momentum, constant rate), on digits with the 2-D ConvNet.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from docsgen import plots
from docsgen.markdown import table

from experiments import common
from experiments.base import Experiment
from experiments.common import Row, Scale

NORMS = ["batchnorm", "identity"]
NORM_OVERRIDES = {"batchnorm": "bn", "identity": "none"}
FIELDS = [
    "scale",
    "norm",
    "lr",
    "seed",
    "target",
    "steps_to_target",
    "test_acc",
    "best_val_acc",
    "final_train_loss",
    "steps",
]


def first_step_reaching(curve: list[tuple[int, float]], target: float) -> float:
    """The first step whose validation accuracy is at least ``target`` (NaN if none)."""
    for step, acc in sorted(curve):
        if acc >= target:
            return float(step)
    return math.nan


def hit(row: Row) -> bool:
    """Whether the run reached the target."""
    value = row.get("steps_to_target", math.nan)
    return isinstance(value, (int, float)) and math.isfinite(value)


class Convergence(Experiment):
    name = "convergence"
    title = "Convergence and learning rate"
    page = "convergence.md"
    preset = "convergence"
    fields = FIELDS
    scales = {  # noqa: RUF012
        "quick": Scale(
            "quick",
            seeds=(0, 1, 2),
            settings={
                "lrs": (0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
                "epochs": 8,
                "val_every": 10,
                "target": 0.9,
                "widths": "[16,32]",
            },
        ),
        "full": Scale(
            "full",
            seeds=(0, 1, 2, 3, 4),
            settings={
                "lrs": (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
                "epochs": 20,
                "val_every": 10,
                "target": 0.95,
                "widths": "[32,64]",
            },
        ),
    }

    def invocations(self, scale: Scale) -> list[list[str]]:
        return [
            [
                f"experiment={self.preset}",
                f"norm={','.join(NORM_OVERRIDES[n] for n in NORMS)}",
                f"optimizer.lr={common.joined(lrs)}",
                f"model.widths={scale['widths']}",
                f"trainer.max_epochs={scale['epochs']}",
                f"trainer.val_check_interval={scale['val_every']}",
                f"seed={common.joined(scale.seeds)}",
            ]
            for lrs in common.halves(scale["lrs"])
        ]

    @staticmethod
    def curve(run_dir: Path) -> list[tuple[int, float]]:
        """``(step, val acc)`` pairs of a run, from its per-step CSV."""
        return [
            (int(float(r["step"])), float(r["val/acc"]))
            for r in common.step_log(run_dir)
            if "val/acc" in r and "step" in r
        ]

    def collect(self, sweep_root: Path, scale: Scale) -> list[Row]:
        rows, curves = [], []
        for run_dir in common.run_dirs(sweep_root):
            m = common.metrics(run_dir)
            norm = common.canonical(m["norm"])
            curve = self.curve(run_dir)
            train = [
                float(r["train/loss_step"])
                for r in common.step_log(run_dir)
                if "train/loss_step" in r
            ]
            rows.append(
                {
                    "scale": scale.name,
                    "norm": norm,
                    "lr": float(m["lr"]),
                    "seed": m["seed"],
                    "target": scale["target"],
                    "steps_to_target": first_step_reaching(curve, scale["target"]),
                    "test_acc": m["test_acc"],
                    "best_val_acc": m["best_val_acc"],
                    "final_train_loss": train[-1] if train else math.nan,
                    "steps": m["steps"],
                }
            )
            curves += [
                {"norm": norm, "lr": float(m["lr"]), "seed": m["seed"], "step": s, "val_acc": a}
                for s, a in curve
            ]
        common.write_csv(self.curves_csv, curves)
        return rows

    @property
    def curves_csv(self) -> Path:
        return common.DATA / f"{self.name}_curves.csv"

    # -- docs -------------------------------------------------------------------------------
    @staticmethod
    def by_norm_lr(rows: list[Row]) -> dict[tuple[str, float], list[Row]]:
        return common.group(rows, "norm", "lr")  # type: ignore[return-value]

    def figures(self, rows: list[Row]) -> list[Path]:
        groups = self.by_norm_lr(rows)
        fig, (ax, ax2) = plots.subplots(ncols=2, size=(4.6, 3.5))
        target = rows[0]["target"]
        for norm in NORMS:
            lrs = sorted(lr for n, lr in groups if n == norm)
            if not lrs:
                continue
            stats = [
                common.mean_std(r.get("steps_to_target", math.nan) for r in groups[(norm, lr)])
                for lr in lrs
            ]
            reached = [(lr, s) for lr, s in zip(lrs, stats, strict=True) if s[2] > 0]
            ax.errorbar(
                [lr for lr, _ in reached],
                [s[0] for _, s in reached],
                yerr=[s[1] for _, s in reached],
                marker="o",
                ms=4,
                capsize=2,
                color=plots.color(norm),
                label=common.label(norm),
            )
            frac = [
                sum(1 for r in groups[(norm, lr)] if hit(r)) / len(groups[(norm, lr)]) for lr in lrs
            ]
            ax2.plot(lrs, frac, marker="o", color=plots.color(norm), label=common.label(norm))
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"steps to {100 * target:.0f}% val acc")
        ax.set_title("steps to target (runs that reached it)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax2.set_xscale("log")
        ax2.set_ylim(-0.05, 1.05)
        ax2.set_xlabel("learning rate")
        ax2.set_ylabel("fraction of seeds reaching target")
        ax2.set_title("learning-rate range")
        ax2.grid(alpha=0.3)
        paths = [plots.save(fig, self.figure_path("steps"))]

        curves = common.read_csv(self.curves_csv)
        if curves:
            lrs = sorted({float(c["lr"]) for c in curves})
            shown = [lr for lr in lrs if lr in (0.03, 0.3, 1.0)] or lrs[:3]
            fig, axes = plots.subplots(ncols=len(shown), size=(3.4, 3.0))
            for ax, lr in zip(axes, shown, strict=True):
                for (norm, seed), pts in common.group(
                    [c for c in curves if float(c["lr"]) == lr], "norm", "seed"
                ).items():
                    ax.plot(
                        [p["step"] for p in pts],
                        [100 * float(p["val_acc"]) for p in pts],
                        color=plots.color(str(norm)),
                        alpha=0.7,
                        lw=1,
                        label=common.label(str(norm)) if seed == 0 else None,
                    )
                ax.axhline(100 * target, color="k", lw=0.6, ls="--")
                ax.set_title(f"lr = {lr:g}")
                ax.set_xlabel("step")
                ax.set_ylim(0, 100)
                ax.grid(alpha=0.3)
            axes[0].set_ylabel("val accuracy (%)")
            axes[0].legend(fontsize=7)
            paths.append(plots.save(fig, self.figure_path("curves")))
        return paths

    def table(self, rows: list[Row]) -> str:
        groups = self.by_norm_lr(rows)
        lrs = sorted({lr for _, lr in groups})
        body = []
        for norm in NORMS:
            cells = []
            for lr in lrs:
                runs = groups.get((norm, lr), [])
                hits = [r["steps_to_target"] for r in runs if hit(r)]
                m, _, n = common.mean_std(hits)
                cells.append(f"{m:.0f} ({n}/{len(runs)})" if n else f"- (0/{len(runs)})")
            body.append([common.label(norm), *cells])
        target = rows[0]["target"]
        return (
            f"Steps to {100 * target:.0f}% validation accuracy, mean over the seeds that "
            "reached it (reached/run), by learning rate:\n\n"
            + table(["norm", *(f"{lr:g}" for lr in lrs)], body)
        )

    def best(self, rows: list[Row], norm: str) -> tuple[float, float] | None:
        """``(mean steps, lr)`` at the learning rate where every seed reached the target
        fastest, or ``None``."""
        out = []
        for (n, lr), runs in self.by_norm_lr(rows).items():
            hits = [r["steps_to_target"] for r in runs if hit(r)]
            if n == norm and hits and len(hits) == len(runs):
                out.append((common.mean_std(hits)[0], lr))
        return min(out) if out else None

    def summary(self, rows: list[Row]) -> str:
        groups = self.by_norm_lr(rows)
        lines = []
        for norm in NORMS:
            b = self.best(rows, norm)
            ok = sorted(
                lr for (n, lr), runs in groups.items() if n == norm and all(hit(r) for r in runs)
            )
            if b:
                lines.append(
                    f"- {common.label(norm)}: fastest at lr {b[1]:g}, {b[0]:.0f} steps; every "
                    f"seed reached the target at lr {', '.join(f'{lr:g}' for lr in ok)}."
                )
            else:
                lines.append(
                    f"- {common.label(norm)}: no learning rate where every seed reached it."
                )
        bn, none = self.best(rows, "batchnorm"), self.best(rows, "identity")
        if bn and none:
            lines.append(
                f"- Fewest steps, no norm / BatchNorm: {none[0]:.0f} / {bn[0]:.0f} = "
                f"**{none[0] / bn[0]:.1f}x** (the BN paper: 14x)."
            )
        elif bn:
            budget = max(int(r["steps"]) for r in rows)
            lines.append(
                f"- Without a norm no learning rate reached the target at every seed within "
                f"the budget of {budget} steps: the speed-up is more than "
                f"**{budget / bn[0]:.1f}x** (the BN paper: 14x)."
            )
        return "\n".join(lines) + "\n"

    def blocks(self, rows: list[Row]) -> dict[str, Callable[[], str]]:
        if not rows:
            return {f"{self.name}/{k}": lambda: "Not run yet.\n" for k in ("table", "summary")}
        return {
            f"{self.name}/table": lambda: self.table(rows),
            f"{self.name}/summary": lambda: self.summary(rows),
        }

    def norm_result(self, rows: list[Row], norm: str) -> str | None:
        if not rows or norm not in {r["norm"] for r in rows}:
            return None
        b = self.best(rows, norm)
        if not b:
            budget = max(int(r["steps"]) for r in rows)
            return (
                f"- digits: at no learning rate did every seed reach "
                f"{100 * rows[0]['target']:.0f}% validation accuracy within {budget} steps\n"
            )
        return (
            f"- digits: {b[0]:.0f} steps to {100 * rows[0]['target']:.0f}% validation accuracy "
            f"at its fastest learning rate ({b[1]:g})\n"
        )


EXPERIMENT = Convergence()
