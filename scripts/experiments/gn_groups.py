"""Experiment 6: the number of GroupNorm groups, from G = 1 (LayerNorm) to G = C (InstanceNorm).

Wu & He (2018), Table 3, ResNet-50 on ImageNet, 32 images per GPU, top-1 error (%):
with a fixed number of groups G = 64, 32, 16, 8, 4, 2, 1 (= LN): 24.6, 24.1, 24.6, 24.4,
24.6, 24.7, 25.3; with a fixed number of channels per group 64, 32, 16, 8, 4, 2, 1 (= IN):
24.4, 24.5, 24.2, 24.3, 24.8, 25.6, 28.4. Every G between the extremes beats both extremes,
and IN (one channel per group) is clearly the worst. Here: the 1-D ConvNet on MNIST-1D with
GroupNorm at G = 1 ... 32 (the first stage has 32 channels... see the page), and with
channels per group from 1 (InstanceNorm) up.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from docsgen import plots
from docsgen.markdown import table

from experiments import common
from experiments.base import Experiment
from experiments.common import Row, Scale

#: Wu & He (2018), Table 3 (top-1 error, %), for the page's comparison.
PAPER_GROUPS = {64: 24.6, 32: 24.1, 16: 24.6, 8: 24.4, 4: 24.6, 2: 24.7, 1: 25.3}
PAPER_GROUP_SIZE = {64: 24.4, 32: 24.5, 16: 24.2, 8: 24.3, 4: 24.8, 2: 25.6, 1: 28.4}
FIELDS = [
    "scale",
    "variant",
    "value",
    "norm",
    "seed",
    "test_acc",
    "best_val_acc",
    "train_time_s",
]


class GNGroups(Experiment):
    name = "gn_groups"
    title = "GroupNorm groups"
    page = "gn-groups.md"
    preset = "gn_groups"
    fields = FIELDS
    scales = {  # noqa: RUF012
        "quick": Scale(
            "quick",
            seeds=(0, 1, 2),
            settings={
                "groups": (1, 2, 4, 8, 16, 32),
                "group_sizes": (1, 2, 4, 8, 16),
                "epochs": 5,
                "convs_per_stage": 1,
                "widths": "[32,64,128]",
            },
        ),
        "full": Scale(
            "full",
            seeds=(0, 1, 2, 3, 4),
            settings={
                "groups": (1, 2, 4, 8, 16, 32),
                "group_sizes": (1, 2, 4, 8, 16, 32),
                "epochs": 30,
                "convs_per_stage": 2,
                "widths": "[32,64,128]",
            },
        ),
    }

    def invocations(self, scale: Scale) -> list[list[str]]:
        base = [
            f"experiment={self.preset}",
            f"model.widths={scale['widths']}",
            f"model.convs_per_stage={scale['convs_per_stage']}",
            f"trainer.max_epochs={scale['epochs']}",
            f"seed={','.join(map(str, scale.seeds))}",
        ]
        return [
            [*base, "norm=gn", f"norm.num_groups={','.join(map(str, scale['groups']))}"],
            [*base, "norm=gn", f"norm.group_size={','.join(map(str, scale['group_sizes']))}"],
        ]

    def collect_run(self, run_dir: Path) -> list[Row]:
        m = common.metrics(run_dir)
        o = common.overrides(run_dir)
        if "norm.num_groups" in o:
            variant, value = "groups", int(o["norm.num_groups"])
        else:
            variant, value = "group_size", int(o["norm.group_size"])
        return [{**m, "norm": common.canonical(m["norm"]), "variant": variant, "value": value}]

    @staticmethod
    def errors(rows: list[Row], variant: str) -> dict[int, list[float]]:
        out: dict[int, list[float]] = {}
        for r in rows:
            if r["variant"] == variant:
                out.setdefault(int(r["value"]), []).append(100 * (1 - float(r["test_acc"])))
        return out

    def figures(self, rows: list[Row]) -> list[Path]:
        fig, axes = plots.subplots(ncols=2, size=(4.2, 3.2))
        for ax, variant, xlabel, paper in (
            (axes[0], "groups", "groups G (1 = LayerNorm)", PAPER_GROUPS),
            (axes[1], "group_size", "channels per group (1 = InstanceNorm)", PAPER_GROUP_SIZE),
        ):
            errs = self.errors(rows, variant)
            xs = sorted(errs)
            stats = [common.mean_std(errs[x]) for x in xs]
            ax.errorbar(
                xs,
                [s[0] for s in stats],
                yerr=[s[1] for s in stats],
                marker="o",
                capsize=2,
                color=plots.color("groupnorm"),
                label="ours (MNIST-1D)",
            )
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs)
            ax.set_xticklabels(map(str, xs))
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test error (%), ours")
            ax.grid(alpha=0.3)
            twin = ax.twinx()
            px = sorted(paper)
            twin.plot(px, [paper[x] for x in px], "k--", marker="s", ms=3, lw=0.8)
            twin.set_ylabel("Wu & He Table 3, ImageNet (%)", fontsize=7)
            ax.plot([], [], "k--", marker="s", ms=3, lw=0.8, label="Wu & He (right axis)")
            ax.legend(fontsize=7)
        return [plots.save(fig, self.figure_path("error"))]

    def table(self, rows: list[Row], variant: str) -> str:
        errs = self.errors(rows, variant)
        paper = PAPER_GROUPS if variant == "groups" else PAPER_GROUP_SIZE
        head = "G" if variant == "groups" else "channels per group"
        body = [
            [str(x), common.pm(errs[x]), f"{paper[x]}" if x in paper else "-"] for x in sorted(errs)
        ]
        return table([head, "ours: test error (%)", "Wu & He: top-1 error (%)"], body)

    def summary(self, rows: list[Row]) -> str:
        lines = []
        for variant, end, name in (("groups", 1, "LayerNorm"), ("group_size", 1, "InstanceNorm")):
            errs = self.errors(rows, variant)
            if end not in errs:
                continue
            best = min(errs, key=lambda x: common.mean_std(errs[x])[0])
            e_end = common.mean_std(errs[end])[0]
            e_best = common.mean_std(errs[best])[0]
            beats = sum(1 for x in errs if x != end and common.mean_std(errs[x])[0] < e_end)
            lines.append(
                f"- {'G' if variant == 'groups' else 'channels per group'} = 1 ({name}): "
                f"{e_end:.1f}%; best at {best} ({e_best:.1f}%); {beats} of {len(errs) - 1} "
                f"other settings have a lower mean error."
            )
        return "\n".join(lines) + "\n" if lines else "Not run yet.\n"

    def blocks(self, rows: list[Row]) -> dict[str, Callable[[], str]]:
        return {
            f"{self.name}/table-groups": lambda: self.table(rows, "groups") if rows else "-\n",
            f"{self.name}/table-group_size": lambda: (
                self.table(rows, "group_size") if rows else "-\n"
            ),
            f"{self.name}/summary": lambda: self.summary(rows),
        }

    def norm_result(self, rows: list[Row], norm: str) -> str | None:
        if norm != "groupnorm" or not rows:
            return None
        errs = self.errors(rows, "groups")
        cells = ", ".join(f"G={g}: {common.mean_std(errs[g])[0]:.1f}%" for g in sorted(errs))
        return f"- MNIST-1D test error by number of groups: {cells}\n"


EXPERIMENT = GNGroups()
