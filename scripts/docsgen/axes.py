"""The Group Normalization paper's cube figure, drawn from a norm class's own attributes.

Wu & He (2018), Fig. 2, draws a feature map as a cube with axes N (batch), C (channels) and
H, W (spatial, flattened to one axis) and colours the values that share one mean and
variance. Here the colouring is computed from ``cls.statistics_per`` and ``cls.reduces_over``
(axis names from ``normzoo.norms.AXES``), so a new norm gets its picture without new code:

- an axis in ``reduces_over`` is coloured along its whole length;
- ``"channel"`` in ``reduces_over`` with ``"group"`` in ``statistics_per`` colours one
  group of channels;
- any other axis is coloured at one index (one statistic per index).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import normzoo

#: Cube size drawn: batch, channels (in groups of GROUP), spatial.
SHAPE = (4, 6, 5)
GROUP = 2
HIGHLIGHT = "#4c72b0"


def normalized_set(cls: type[normzoo.Norm]) -> np.ndarray | None:
    """Boolean ``SHAPE`` mask of the values that share one statistic, or ``None`` if none."""
    per, over = tuple(cls.statistics_per), tuple(cls.reduces_over)
    if not per and not over:
        return None
    batch = slice(None) if "batch" in over else slice(0, 1)
    if "channel" in over and "group" in per:
        chan = slice(0, GROUP)
    elif "channel" in over or "group" in over:
        chan = slice(None)
    else:
        chan = slice(0, 1)
    spatial = slice(None) if "spatial" in over else slice(0, 1)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[batch, chan, spatial] = True
    return mask


def describe(cls: type[normzoo.Norm]) -> str:
    """One sentence naming what the coloured cells are."""
    per = ", ".join(cls.statistics_per) or "nothing"
    over = ", ".join(cls.reduces_over) or "nothing"
    if not cls.statistics_per and not cls.reduces_over:
        return "No statistics: no cell is normalized."
    return (
        f"Coloured: the values that share one mean and variance (one statistic per {per}; "
        f"reduced over {over})."
    )


def draw_cube(cls: type[normzoo.Norm], path: Path, title: str | None = None) -> Path:
    """Draw the cube figure of ``cls`` to ``path`` (PNG) and return ``path``."""
    mask = normalized_set(cls)
    filled = np.ones(SHAPE, dtype=bool)
    colors = np.empty(SHAPE, dtype=object)
    colors[:] = "#ffffff10"
    if mask is not None:
        colors[mask] = HIGHLIGHT
    # Axes as in the GN paper: C to the right, N into the page, H,W up.
    filled_t = filled.transpose(1, 0, 2)
    colors_t = colors.transpose(1, 0, 2)
    fig = plt.figure(figsize=(2.6, 2.6))
    ax = fig.add_subplot(projection="3d")
    ax.voxels(filled_t, facecolors=colors_t, edgecolors="#55555580", linewidth=0.4)
    ax.set_box_aspect(tuple(SHAPE[i] for i in (1, 0, 2)))
    ax.set_xlabel("C", labelpad=-12)
    ax.set_ylabel("N", labelpad=-12)
    ax.set_zlabel("H, W", labelpad=-12)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_zticks([])
    ax.view_init(elev=22, azim=-58)
    ax.set_title(title or cls.__name__, fontsize=10, pad=0)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.pane.set_visible(False)
        axis.line.set_visible(False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path
