"""The experiments the docs report, and the hooks ``make_docs.py`` calls on them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from experiments import (
    batch_size,
    bn_position,
    convergence,
    gn_groups,
    ics,
    saturation,
    train_eval,
)
from experiments.base import Experiment

#: In the order of the issue and the docs' navigation.
EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        batch_size.EXPERIMENT,
        convergence.EXPERIMENT,
        saturation.EXPERIMENT,
        ics.EXPERIMENT,
        bn_position.EXPERIMENT,
        gn_groups.EXPERIMENT,
        train_eval.EXPERIMENT,
    )
}


def norm_results(norm: str) -> Iterator[tuple[str, str, str]]:
    """``(title, page, markdown)`` for every experiment with recorded results for ``norm``."""
    for exp in EXPERIMENTS.values():
        text = exp.norm_result(exp.rows(), norm)
        if text:
            yield exp.title, exp.page, text


def block_generators() -> dict[str, Callable[[], str]]:
    """Every generated block key of the experiment pages, mapped to its generator."""
    out: dict[str, Callable[[], str]] = {"experiments/timings": timings_table}
    for exp in EXPERIMENTS.values():
        out.update(exp.all_blocks())
    return out


def timings_table() -> str:
    """Every recorded experiment's wall time, and the total per scale."""
    from docsgen.markdown import table

    from experiments import common

    rows = common.read_csv(common.TIMINGS)
    if not rows:
        return "No experiment has been run yet.\n"
    body = [
        (
            f"[{EXPERIMENTS[r['experiment']].title}]({EXPERIMENTS[r['experiment']].page})"
            if r["experiment"] in EXPERIMENTS
            else r["experiment"],
            r["scale"],
            r["runs"],
            f"{float(r['wall_s']) / 60:.1f} min",
            r["parallel_jobs"],
            r.get("load_avg_start_end", "?"),
        )
        for r in rows
    ]
    totals = {}
    for r in rows:
        totals[r["scale"]] = totals.get(r["scale"], 0.0) + float(r["wall_s"])
    for scale, wall in sorted(totals.items()):
        body.append((f"**total ({scale})**", scale, "", f"**{wall / 60:.1f} min**", "", ""))
    machines = sorted({r["machine"] for r in rows})
    return (
        table(
            ["experiment", "scale", "runs", "wall time", "parallel jobs", "load average"],
            body,
            align="llrrrr",
        )
        + f"\nMachine: {'; '.join(machines)}. The load average (1 minute, at the start and the "
        "end of each experiment) shows how busy the shared machine was: above 2 on these 2 "
        "cores, other processes competed with the runs and the wall times are inflated.\n"
    )


def draw_all_figures() -> list[Path]:
    """Draw every experiment's figures from its CSV; return the paths."""
    paths: list[Path] = []
    for exp in EXPERIMENTS.values():
        rows = exp.rows()
        if rows:
            paths += exp.figures(rows)
    return paths
