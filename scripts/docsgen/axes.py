"""The Group Normalization paper's cube figure, drawn from a norm class's own attributes.

Wu & He (2018), Fig. 2, draws a feature map as a cube with axes N (batch), C (channels) and
H, W (spatial, flattened to one axis) and colours the values normalized by the same mean and
variance. Here the colouring is computed from ``cls.statistics_per`` and ``cls.reduces_over``
(axis names from ``normzoo.norms.AXES``), so a new norm gets its picture without new code:

- one statistic per index of each axis in ``statistics_per``: the values that share a
  statistic (dark) extend along every other axis; ``"group"`` in ``statistics_per`` limits
  the channels to one group;
- a norm whose ``reduces_over`` also names an axis it keeps statistics per (SwitchableNorm
  mixes instance, layer and batch statistics) draws, light, the values it also reads;
- a norm with neither (Identity) has no statistics and nothing coloured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import normzoo

#: Cube size drawn: batch, channels (in groups of GROUP), spatial.
SHAPE = (4, 6, 5)
GROUP = 2
DARK = "#4c72b0"
LIGHT = "#4c72b040"


def _mask(full_batch: bool, channels: str, full_spatial: bool) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    chan = {"all": slice(None), "group": slice(0, GROUP), "one": slice(0, 1)}[channels]
    mask[
        slice(None) if full_batch else slice(0, 1),
        chan,
        slice(None) if full_spatial else slice(0, 1),
    ] = True
    return mask


def normalized_set(cls: type[normzoo.Norm]) -> tuple[np.ndarray, np.ndarray] | None:
    """Boolean ``SHAPE`` masks: the values sharing one statistic, and the values it also reads.

    ``None`` when the norm keeps no statistics.
    """
    per, over = set(cls.statistics_per), set(cls.reduces_over)
    if not per and not over:
        return None
    if "group" in per:
        channels = "group"
    elif "channel" in per:
        channels = "one"
    else:
        channels = "all"
    shared = _mask("batch" not in per, channels, "spatial" not in per)
    read = shared.copy()
    if per & over:  # it mixes statistics over sets larger than one statistic's
        read = _mask(
            "batch" in over or "batch" not in per,
            "all" if ("channel" in over or "group" in over) else channels,
            "spatial" in over or "spatial" not in per,
        )
    return shared, read & ~shared


def describe(cls: type[normzoo.Norm]) -> str:
    """One sentence naming what the coloured cells are."""
    if not cls.statistics_per and not cls.reduces_over:
        return "No statistics: no value is normalized."
    per = ", ".join(cls.statistics_per) or "nothing"
    over = ", ".join(cls.reduces_over) or "nothing at run time (fixed statistics)"
    text = (
        f"Dark: the values normalized with the same statistics (one set per {per}; "
        f"computed over {over})."
    )
    sets = normalized_set(cls)
    if sets is not None and sets[1].any():
        text += (
            " Light: the other values it reads, because it mixes statistics computed over "
            "different sets."
        )
    return text


def draw_cube(cls: type[normzoo.Norm], path: Path, title: str | None = None) -> Path:
    """Draw the cube figure of ``cls`` to ``path`` (PNG) and return ``path``."""
    from docsgen.plots import plt

    sets = normalized_set(cls)
    filled = np.ones(SHAPE, dtype=bool)
    colors = np.empty(SHAPE, dtype=object)
    colors[:] = "#ffffff10"
    if sets is not None:
        colors[sets[1]] = LIGHT
        colors[sets[0]] = DARK
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
