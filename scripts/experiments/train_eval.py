"""Experiment 7: train vs eval statistics.

BatchNorm normalizes a training batch with that batch's statistics and, at inference
(``model.eval()``, the study notebook's point 2), with running averages collected during
training. The two coincide only if the running averages are good estimates and each batch
is large enough for its statistics to be close to them. Here: BatchNorm ConvNets on MNIST-1D
trained at several batch sizes and running-average momenta; each run's test accuracy with
the running statistics (eval mode, what ``metrics.json`` reports) and with the statistics of
each test batch of the training batch size (the ``BatchStatsTest`` callback).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from docsgen import plots
from docsgen.markdown import table

from experiments import common
from experiments.base import Experiment
from experiments.common import Row, Scale

FIELDS = [
    "scale",
    "batch_size",
    "momentum",
    "seed",
    "lr",
    "test_acc",
    "test_acc_batch_stats",
    "steps",
]


class TrainEval(Experiment):
    name = "train_eval"
    title = "Train vs eval statistics"
    page = "train-eval.md"
    preset = "train_eval"
    fields = FIELDS
    base_batch = 32
    scales = {  # noqa: RUF012
        "quick": Scale(
            "quick",
            seeds=(0, 1, 2),
            settings={
                "batch_sizes": (2, 8, 32),
                "momenta": (0.01, 0.1, 0.5),
                "base_lr": 0.05,
                "epochs": 2,
                "limit_train_batches": 0.2,
                "widths": "[16,32,64]",
            },
        ),
        "full": Scale(
            "full",
            seeds=(0, 1, 2, 3, 4),
            settings={
                "batch_sizes": (2, 4, 8, 16, 32, 64),
                "momenta": (0.001, 0.01, 0.1, 0.5),
                "base_lr": 0.05,
                "epochs": 30,
                "limit_train_batches": 1.0,
                "widths": "[32,64,128]",
            },
        ),
    }

    def invocations(self, scale: Scale) -> list[list[str]]:
        return [
            [
                f"experiment={self.preset}",
                f"data.batch_size={b}",
                f"optimizer.lr={scale['base_lr'] * b / self.base_batch:.6g}",
                f"norm.momentum={','.join(map(str, scale['momenta']))}",
                f"model.widths={scale['widths']}",
                f"trainer.max_epochs={scale['epochs']}",
                f"trainer.limit_train_batches={scale['limit_train_batches']}",
                f"seed={','.join(map(str, scale.seeds))}",
            ]
            for b in scale["batch_sizes"]
        ]

    def collect_run(self, run_dir: Path) -> list[Row]:
        import json

        m = common.metrics(run_dir)
        extra = json.loads((run_dir / "test_batch_stats.json").read_text())
        momentum = float(common.overrides(run_dir)["norm.momentum"])
        return [{**m, "momentum": momentum, **extra, "batch_size": m["batch_size"]}]

    @staticmethod
    def accs(rows: list[Row]) -> dict[tuple[int, float], list[Row]]:
        return common.group(rows, "batch_size", "momentum")  # type: ignore[return-value]

    def figures(self, rows: list[Row]) -> list[Path]:
        groups = self.accs(rows)
        momenta = sorted({m for _, m in groups})
        sizes = sorted({b for b, _ in groups})
        fig, axes = plots.subplots(ncols=2, size=(4.3, 3.3))
        for k, mom in enumerate(momenta):
            c = plots.plt.cm.plasma(k / max(1, len(momenta)))
            for ax, key, ls in (
                (axes[0], "test_acc", "-"),
                (axes[0], "test_acc_batch_stats", ":"),
            ):
                stats = [common.mean_std(r[key] for r in groups[(b, mom)]) for b in sizes]
                ax.errorbar(
                    sizes,
                    [100 * s[0] for s in stats],
                    yerr=[100 * s[1] for s in stats],
                    color=c,
                    ls=ls,
                    marker="o",
                    ms=3,
                    capsize=2,
                    label=f"m={mom:g}, {'running' if key == 'test_acc' else 'batch'} stats",
                )
            gaps = [
                common.mean_std(r["test_acc_batch_stats"] - r["test_acc"] for r in groups[(b, mom)])
                for b in sizes
            ]
            axes[1].errorbar(
                sizes,
                [100 * g[0] for g in gaps],
                yerr=[100 * g[1] for g in gaps],
                color=c,
                marker="o",
                ms=3,
                capsize=2,
                label=f"momentum {mom:g}",
            )
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes)
            ax.set_xticklabels(map(str, sizes))
            ax.set_xlabel("training (and test) batch size")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("test accuracy (%)")
        axes[0].legend(fontsize=6)
        axes[1].axhline(0, color="k", lw=0.6)
        axes[1].set_ylabel("batch stats − running stats (points)")
        axes[1].legend(fontsize=7)
        return [plots.save(fig, self.figure_path("accuracy"))]

    def table(self, rows: list[Row]) -> str:
        groups = self.accs(rows)
        body = [
            [
                str(b),
                f"{mom:g}",
                common.pm((r["test_acc"] for r in runs), 100),
                common.pm((r["test_acc_batch_stats"] for r in runs), 100),
                common.pm((r["test_acc_batch_stats"] - r["test_acc"] for r in runs), 100),
            ]
            for (b, mom), runs in sorted(groups.items())
        ]
        return "Test accuracy (%), mean ± std over seeds:\n\n" + table(
            [
                "batch size",
                "momentum",
                "running statistics (eval)",
                "batch statistics",
                "difference (points)",
            ],
            body,
        )

    def summary(self, rows: list[Row]) -> str:
        """Per batch size: the gap (batch - running statistics) at each momentum."""

        def gap(runs: list[Row]) -> float:
            return 100 * common.mean_std(r["test_acc_batch_stats"] - r["test_acc"] for r in runs)[0]

        lines = []
        for (b,), runs in sorted(common.group(rows, "batch_size").items()):
            gaps = ", ".join(
                f"momentum {mom:g}: {gap(g):+.1f}"
                for (mom,), g in sorted(common.group(runs, "momentum").items())
            )
            lines.append(f"- batch {b}, batch − running statistics (points): {gaps}.")
        return "\n".join(lines) + "\n"

    def blocks(self, rows: list[Row]) -> dict[str, Callable[[], str]]:
        return {
            f"{self.name}/table": lambda: self.table(rows) if rows else "Not run yet.\n",
            f"{self.name}/summary": lambda: self.summary(rows) if rows else "Not run yet.\n",
        }

    def norm_result(self, rows: list[Row], norm: str) -> str | None:
        if norm != "batchnorm" or not rows:
            return None
        groups = self.accs(rows)

        def mean(runs: list[Row], key: str) -> float:
            return 100 * common.mean_std(r[key] for r in runs)[0]

        parts = [
            f"batch {b}, momentum {mom:g}: running {mean(g, 'test_acc'):.1f}% vs batch "
            f"{mean(g, 'test_acc_batch_stats'):.1f}%"
            for (b, mom), g in sorted(groups.items())
        ]
        return "- MNIST-1D test accuracy, " + "; ".join(parts) + "\n"


EXPERIMENT = TrainEval()
