"""Experiment 5: BatchNorm before or after the activation.

The BN paper (Ioffe & Szegedy 2015, Sec. 3.2) normalizes ``x = Wu + b`` right before the
nonlinearity, ``z = g(BN(Wu))``, arguing that this pre-activation is "more likely to have a
symmetric, non-sparse distribution". The study notebook says the opposite: "BN层是放在激活层
之后的" (the BN layer goes after the activation). Here: the same ConvNets with
``norm_position=before_act`` (conv → BN → ReLU) and ``after_act`` (conv → ReLU → BN), no
norm as the reference, on MNIST-1D and digits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from docsgen import plots
from docsgen.markdown import table

from experiments import common
from experiments.base import Experiment
from experiments.common import Row, Scale

DATASETS = {"mnist1d": "convnet1d", "digits": "convnet2d"}
POSITIONS = ("before_act", "after_act")
FIELDS = [
    "scale",
    "data",
    "norm",
    "norm_position",
    "seed",
    "lr",
    "test_acc",
    "best_val_acc",
    "train_time_s",
]


class BNPosition(Experiment):
    name = "bn_position"
    title = "BN before or after the activation"
    page = "bn-position.md"
    preset = "bn_position"
    fields = FIELDS
    scales = {  # noqa: RUF012
        "quick": Scale(
            "quick",
            seeds=(0, 1, 2),
            settings={
                "epochs": {"mnist1d": 6, "digits": 4},
                "widths": {"mnist1d": "[16,32,64]", "digits": "[16,32]"},
            },
        ),
        "full": Scale(
            "full",
            seeds=(0, 1, 2, 3, 4),
            settings={
                "epochs": {"mnist1d": 30, "digits": 30},
                "widths": {"mnist1d": "[32,64,128]", "digits": "[32,64]"},
            },
        ),
    }

    def invocations(self, scale: Scale) -> list[list[str]]:
        out = []
        for data, model in DATASETS.items():
            common_overrides = [
                f"experiment={self.preset}",
                f"data={data}",
                f"model={model}",
                f"model.widths={scale['widths'][data]}",
                f"trainer.max_epochs={scale['epochs'][data]}",
                f"seed={','.join(map(str, scale.seeds))}",
            ]
            out.append([*common_overrides, "norm=bn", f"model.norm_position={','.join(POSITIONS)}"])
            out.append([*common_overrides, "norm=none"])
        return out

    def collect_run(self, run_dir: Path) -> list[Row]:
        m = common.metrics(run_dir)
        m["norm"] = common.canonical(m["norm"])
        if m["norm"] == "identity":
            m["norm_position"] = "-"
        return [m]

    @staticmethod
    def variants(rows: list[Row]) -> dict[tuple[str, str, str], list[float]]:
        """Test errors (%) keyed by ``(data, norm, position)``."""
        out: dict[tuple[str, str, str], list[float]] = {}
        for r in rows:
            key = (r["data"], r["norm"], str(r["norm_position"]))
            out.setdefault(key, []).append(100 * (1 - float(r["test_acc"])))
        return out

    @staticmethod
    def variant_label(norm: str, position: str) -> str:
        if norm == "identity":
            return "no norm"
        return {"before_act": "conv→BN→ReLU", "after_act": "conv→ReLU→BN"}.get(position, position)

    def figures(self, rows: list[Row]) -> list[Path]:
        errs = self.variants(rows)
        order = [("batchnorm", "before_act"), ("batchnorm", "after_act"), ("identity", "-")]
        datas = [d for d in DATASETS if any(k[0] == d for k in errs)]
        fig, axes = plots.subplots(ncols=len(datas), size=(3.6, 3.2))
        for ax, data in zip(axes, datas, strict=True):
            stats = [common.mean_std(errs.get((data, n, p), [])) for n, p in order]
            ax.bar(
                range(len(order)),
                [s[0] for s in stats],
                yerr=[s[1] for s in stats],
                color=["#1f77b4", "#aec7e8", "#7f7f7f"],
                capsize=3,
            )
            for i, (n, p) in enumerate(order):
                pts = errs.get((data, n, p), [])
                ax.scatter([i] * len(pts), pts, color="k", s=6, zorder=3)
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels([self.variant_label(n, p) for n, p in order], fontsize=7)
            ax.set_ylabel("test error (%)")
            ax.set_title(data)
            ax.grid(alpha=0.3, axis="y")
        return [plots.save(fig, self.figure_path("error"))]

    def table(self, rows: list[Row]) -> str:
        errs = self.variants(rows)
        order = [("batchnorm", "before_act"), ("batchnorm", "after_act"), ("identity", "-")]
        datas = [d for d in DATASETS if any(k[0] == d for k in errs)]
        body = [
            [f"`{self.variant_label(n, p)}`", *(common.pm(errs.get((d, n, p), [])) for d in datas)]
            for n, p in order
        ]
        return "Test error (%), mean ± std over seeds:\n\n" + table(["model", *datas], body)

    def summary(self, rows: list[Row]) -> str:
        errs = self.variants(rows)
        lines = []
        for data in DATASETS:
            before = common.mean_std(errs.get((data, "batchnorm", "before_act"), []))
            after = common.mean_std(errs.get((data, "batchnorm", "after_act"), []))
            if before[2] and after[2]:
                diff = after[0] - before[0]
                pooled = ((before[1] ** 2 + after[1] ** 2) / 2) ** 0.5
                lines.append(
                    f"- {data}: after − before = {diff:+.2f} points "
                    f"({abs(diff) / pooled if pooled else float('inf'):.1f} pooled standard "
                    f"deviations)."
                )
        return "\n".join(lines) + "\n" if lines else "Not run yet.\n"

    def blocks(self, rows: list[Row]) -> dict[str, Callable[[], str]]:
        return {
            f"{self.name}/table": lambda: self.table(rows) if rows else "Not run yet.\n",
            f"{self.name}/summary": lambda: self.summary(rows),
        }

    def norm_result(self, rows: list[Row], norm: str) -> str | None:
        if norm != "batchnorm" or not rows:
            return None
        errs = self.variants(rows)
        parts = [
            f"{d}: before {common.mean_std(errs.get((d, norm, 'before_act'), []))[0]:.1f}%, "
            f"after {common.mean_std(errs.get((d, norm, 'after_act'), []))[0]:.1f}%"
            for d in DATASETS
            if (d, norm, "before_act") in errs
        ]
        return "- test error with BN before/after the ReLU: " + "; ".join(parts) + "\n"


EXPERIMENT = BNPosition()
