"""The experiments the docs report, and the hooks ``make_docs.py`` calls on them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

EXPERIMENTS: dict[str, object] = {}


def norm_results(norm: str) -> Iterator[tuple[str, str, str]]:
    """``(title, page, markdown)`` for every experiment with recorded results for ``norm``."""
    return iter(())


def block_generators() -> dict[str, Callable[[], str]]:
    """Every generated block key of the experiment pages, mapped to its generator."""
    return {}


def draw_all_figures() -> list[Path]:
    """Draw every experiment's figures from its CSV; return the paths."""
    return []
