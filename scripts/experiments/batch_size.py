"""Experiment 1: batch-size sensitivity (Wu & He 2018, Fig. 1).

ResNet-50 on ImageNet: BatchNorm's top-1 error rises from 23.6% at 32 images per GPU to 34.7%
at 2, while GroupNorm stays at about 24.1%. Here: test error vs batch size for every norm, on
MNIST-1D (1-D ConvNet) and digits (2-D ConvNet), with the learning rate scaled linearly with
the batch size and the same number of epochs at every batch size, as the paper does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from docsgen import plots
from docsgen.markdown import table

from experiments import common
from experiments.base import Experiment
from experiments.common import Row, Scale

CORE = ["batchnorm", "groupnorm", "layernorm", "instancenorm", "identity"]
#: How the sweep names each norm: GroupNorm as ``gn_size4`` (4 channels per group), since the
#: default 32 groups would make the narrow layers of the quick scale InstanceNorm.
#: GhostBatchNorm as ``gbn2`` (ghost batches of 2 at every batch size; the default ghost
#: batch does not fit a batch of 2).
#: BatchRenorm as ``brn_short`` (its default warm-up outlasts every quick run).
OVERRIDE = {
    "groupnorm": "gn_size4",
    "identity": "none",
    "ghostbatchnorm": "gbn2",
    "batchrenorm": "brn_short",
}
#: The batch-dependent norms of the wider zoo (and FRN/EvoNorm, which the issue lists),
#: used where registered.
ZOO = ["batchrenorm", "ghostbatchnorm", "switchablenorm", "frn", "evonorm_b0", "evonorm_s0"]
DATASETS = {"mnist1d": "convnet1d", "digits": "convnet2d"}
FIELDS = [
    "scale",
    "data",
    "model",
    "norm",
    "batch_size",
    "seed",
    "lr",
    "epochs",
    "steps",
    "test_acc",
    "best_val_acc",
    "train_time_s",
]


class BatchSize(Experiment):
    name = "batch_size"
    title = "Batch size"
    page = "batch-size.md"
    preset = "batch_size"
    fields = FIELDS
    base_batch = 32
    scales = {  # noqa: RUF012
        "quick": Scale(
            "quick",
            seeds=(0, 1, 2),
            settings={
                "batch_sizes": (2, 4, 8, 16, 32, 64),
                "base_lr": 0.05,
                "epochs": {"mnist1d": 2, "digits": 2},
                "limit_train_batches": {"mnist1d": 0.3, "digits": 1.0},
                "widths": {"mnist1d": "[16,32,64]", "digits": "[16,32]"},
                "convs_per_stage": 1,
                "zoo_on": ("mnist1d",),
            },
        ),
        "full": Scale(
            "full",
            seeds=(0, 1, 2, 3, 4),
            settings={
                "batch_sizes": (2, 4, 8, 16, 32, 64),
                "base_lr": 0.05,
                "epochs": {"mnist1d": 30, "digits": 30},
                "limit_train_batches": {"mnist1d": 1.0, "digits": 1.0},
                "widths": {"mnist1d": "[32,64,128]", "digits": "[32,64]"},
                "convs_per_stage": 2,
                "zoo_on": ("mnist1d", "digits"),
            },
        ),
    }

    def norms(self, scale: Scale, data: str) -> list[str]:
        zoo = common.registered(ZOO) if data in scale["zoo_on"] else []
        return CORE + zoo

    def invocations(self, scale: Scale) -> list[list[str]]:
        out = []
        seeds = ",".join(map(str, scale.seeds))
        for data, model in DATASETS.items():
            for b in scale["batch_sizes"]:
                lr = scale["base_lr"] * b / self.base_batch
                out.append(
                    (
                        b,
                        [
                            f"experiment={self.preset}",
                            f"data={data}",
                            f"model={model}",
                            f"model.widths={scale['widths'][data]}",
                            f"norm={','.join(OVERRIDE.get(n, n) for n in self.norms(scale, data))}",
                            f"model.convs_per_stage={scale['convs_per_stage']}",
                            f"data.batch_size={b}",
                            f"optimizer.lr={lr:.6g}",
                            f"trainer.max_epochs={scale['epochs'][data]}",
                            f"trainer.limit_train_batches={scale['limit_train_batches'][data]}",
                            f"seed={seeds}",
                        ],
                    )
                )
        # The slowest invocations (smallest batches) first, so parallel jobs finish together.
        return [overrides for _, overrides in sorted(out, key=lambda bo: bo[0])]

    def collect_run(self, run_dir: Path) -> list[Row]:
        m = common.metrics(run_dir)
        m["norm"] = common.canonical(m["norm"])
        return [m]

    # -- docs -------------------------------------------------------------------------------
    @staticmethod
    def errors(rows: list[Row]) -> dict[tuple[str, str, int], list[float]]:
        """Test errors (%) keyed by ``(data, norm, batch_size)``."""
        out: dict[tuple[str, str, int], list[float]] = {}
        for r in rows:
            out.setdefault((r["data"], r["norm"], int(r["batch_size"])), []).append(
                100 * (1 - float(r["test_acc"]))
            )
        return out

    def figures(self, rows: list[Row]) -> list[Path]:
        errs = self.errors(rows)
        paths = []
        for data in DATASETS:
            keys = [k for k in errs if k[0] == data]
            if not keys:
                continue
            norms = list(dict.fromkeys(k[1] for k in keys))
            fig, (ax,) = plots.subplots(size=(7.2, 3.8))
            for norm in norms:
                bs = sorted(k[2] for k in keys if k[1] == norm)
                stats = [common.mean_std(errs[(data, norm, b)]) for b in bs]
                ax.errorbar(
                    bs,
                    [s[0] for s in stats],
                    yerr=[s[1] for s in stats],
                    label=common.label(norm),
                    color=plots.color(norm),
                    marker="o",
                    ms=3,
                    capsize=2,
                    lw=1.2,
                )
            ax.set_xscale("log", base=2)
            ax.invert_xaxis()  # as in Wu & He, Fig. 1: large batches on the left
            ax.set_xticks(sorted({k[2] for k in keys}))
            ax.set_xticklabels([str(b) for b in sorted({k[2] for k in keys})])
            ax.set_xlabel("batch size (lr scaled linearly)")
            ax.set_ylabel("test error (%)")
            ax.set_title(f"{data}: test error vs batch size (mean ± std over seeds)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
            paths.append(plots.save(fig, self.figure_path(data)))
        return paths

    def table(self, rows: list[Row], data: str) -> str:
        errs = self.errors(rows)
        keys = [k for k in errs if k[0] == data]
        if not keys:
            return "No recorded runs.\n"
        bs = sorted({k[2] for k in keys}, reverse=True)
        norms = list(dict.fromkeys(k[1] for k in keys))
        seeds = max(len(v) for v in errs.values())
        body = [
            [common.label(n)] + [common.pm(errs.get((data, n, b), [])) for b in bs] for n in norms
        ]
        return f"Test error (%), mean ± std over {seeds} seeds, by batch size:\n\n" + table(
            ["norm", *map(str, bs)], body
        )

    def summary(self, rows: list[Row]) -> str:
        """The numbers the page's verdict rests on, for BN and GN."""
        errs = self.errors(rows)
        lines = []
        for data in DATASETS:
            parts = []
            for norm in ("batchnorm", "groupnorm", "layernorm", "identity"):
                hi, lo = errs.get((data, norm, 32)), errs.get((data, norm, 2))
                if not hi or not lo:
                    continue
                m32, m2 = common.mean_std(hi)[0], common.mean_std(lo)[0]
                parts.append(
                    f"{common.label(norm)} {m32:.1f}% → {m2:.1f}% ({m2 - m32:+.1f} points)"
                )
            if parts:
                lines.append(f"- **{data}**, batch 32 → 2: " + "; ".join(parts) + ".")
        if not lines:
            return "No recorded runs.\n"
        return "\n".join(lines) + "\n"

    def blocks(self, rows: list[Row]) -> dict[str, Callable[[], str]]:
        return {
            f"{self.name}/summary": lambda: self.summary(rows),
            **{f"{self.name}/table-{d}": (lambda d=d: self.table(rows, d)) for d in DATASETS},
        }

    def norm_result(self, rows: list[Row], norm: str) -> str | None:
        errs = self.errors(rows)
        lines = []
        for data in DATASETS:
            bs = sorted((k[2] for k in errs if k[0] == data and k[1] == norm), reverse=True)
            if bs:
                cells = ", ".join(
                    f"{b}: {common.mean_std(errs[(data, norm, b)])[0]:.1f}%" for b in bs
                )
                lines.append(f"- {data}, test error by batch size: {cells}")
        if not lines:
            return None
        return "\n".join(lines) + "\n"


EXPERIMENT = BatchSize()
