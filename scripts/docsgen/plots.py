"""Matplotlib helpers shared by the experiment figures (PNG, modest size and dpi)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

DPI = 90
#: Fixed colours per norm, so a norm looks the same in every figure.
COLORS = {
    "batchnorm": "#1f77b4",
    "groupnorm": "#2ca02c",
    "layernorm": "#ff7f0e",
    "instancenorm": "#9467bd",
    "identity": "#7f7f7f",
    "noisybn": "#d62728",
    "batchrenorm": "#17becf",
    "ghostbatchnorm": "#8c564b",
    "switchablenorm": "#e377c2",
    "frn": "#bcbd22",
    "evonorm_b0": "#393b79",
    "evonormb0": "#393b79",
    "evonorm_s0": "#637939",
    "evonorms0": "#637939",
    "rmsnorm": "#843c39",
}


def color(norm: str) -> str | None:
    """The colour of ``norm`` (``None``: matplotlib's cycle)."""
    return COLORS.get(norm)


def subplots(
    ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (4.6, 3.3)
) -> tuple[Figure, Sequence[Axes]]:
    """A figure of ``nrows x ncols`` panels of ``size`` inches each; axes as a flat list."""
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False
    )
    return fig, [ax for row in axes for ax in row]


def save(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as a PNG at ``path`` and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
