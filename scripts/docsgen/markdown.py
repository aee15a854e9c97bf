"""Markdown helpers: tables, and the generated blocks that ``make_docs.py`` keeps in sync.

A hand-written page marks a generated block with two HTML comments::

    <!-- generated: batch-size/table -->
    ... (anything; replaced by the generator's output) ...
    <!-- end generated -->

``fill_blocks`` replaces each block's body with the output of the generator registered under
its key; the test suite calls it and fails when a page's body differs from what the recorded
data gives (a table that disagrees with its CSV).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

BLOCK = re.compile(
    r"(<!-- generated: (?P<key>[\w./-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S
)


class MissingGeneratorError(KeyError):
    """A page names a generated block that no generator provides."""


def table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A markdown table. ``align`` is one character per column: ``l``, ``r`` or ``c``."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(str(h) for h in header) + " |"]
    lines.append("| " + " | ".join(rule[a] for a in align) + " |")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def block_keys(text: str) -> list[str]:
    """The keys of the generated blocks of ``text``, in order."""
    return [m.group("key") for m in BLOCK.finditer(text)]


def fill_blocks(text: str, generators: Mapping[str, Callable[[], str]]) -> str:
    """``text`` with each generated block's body replaced by its generator's output."""

    def sub(m: re.Match[str]) -> str:
        key = m.group("key")
        if key not in generators:
            raise MissingGeneratorError(f"no generator for the block {key!r}")
        body = generators[key]().rstrip("\n") + "\n"
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(sub, text)
