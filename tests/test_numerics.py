"""Every norm's default path stays within float32's reach of its float64 math on inputs whose
mean dwarfs their spread (mean 10000, std 1): at most 20x the error of the reference math in
float32 (the formula with a two-pass variance), which sets what float32 allows for each norm.
torch's channels_last batch-norm kernel, which the BatchNorm family keeps below its native
kernels' sizes, reaches 10x; a one-pass variance (torch's channels_last GroupNorm: 1e10x) or
a gradient taken against a rounded mean (EvoNorm before the sixteenth session: 400x) fails.
Measured with ``scripts/accuracy.py``, whose page (docs/numerics.md) shows the numbers."""

from __future__ import annotations

import pytest
from norm_testing import load_script

import normzoo

load_script("bench")  # (accuracy imports from it)
accuracy = load_script("accuracy")

#: One value per statistic on tokens: the exact input gradient is ~0, so rounding dominates
#: the relative error in every path (see the numerics page); their outputs are still checked.
DEGENERATE_TOKENS = ("frn", "evonormb0")
CASES = [
    ((8, 16, 8, 8), "contiguous"),
    ((8, 16, 8, 8), "channels_last"),
    ((16, 32, 16, 16), "channels_last"),
    ((256, 256), "contiguous"),
]


NORMS = [n for n in normzoo.available() if n not in accuracy.SKIP]


def _takes(name: str, shape: tuple[int, ...]) -> bool:
    """Whether ``name`` takes this input (InstanceNorm and SwitchableNorm need positions)."""
    return accuracy._build(name, shape[1], shape[0], len(shape) == 2, "fast") is not None


@pytest.mark.parametrize(
    ("name", "shape", "layout"),
    [(name, *case) for name in NORMS for case in CASES if _takes(name, case[0])],
    ids=str,
)
def test_default_path_within_float32_reach_at_large_mean(name, shape, layout):
    row = accuracy.accuracy_row(name, shape, layout, 10000.0)
    for part in ("y", "dx"):
        if part == "dx" and len(shape) == 2 and name in DEGENERATE_TOKENS:
            continue
        fast, ref = row[f"fast_{part}"], row[f"reference_{part}"]
        assert fast <= 20 * max(ref, 1e-5), f"{part}: {fast:.1e} against the reference's {ref:.1e}"
