"""``normzoo summarize <folder>``: every run's ``metrics.json`` under a folder, as one table.

Standard library only: the docs and scripts read runs through this module.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"

#: The table's columns by default (every ``metrics.json`` field can be asked for).
DEFAULT_COLUMNS = (
    "norm",
    "model",
    "data",
    "batch_size",
    "seed",
    "test_acc",
    "best_val_acc",
    "epochs",
    "train_time_s",
    "run",
)


def collect(folder: str | Path) -> list[dict[str, Any]]:
    """The metrics of every run under ``folder`` (recursively), with ``run``, the run's
    folder relative to ``folder``; sorted by norm, model, data, batch size and seed."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    rows = []
    for path in sorted(root.rglob(METRICS_FILE)):
        row = json.loads(path.read_text())
        row["run"] = str(path.parent.relative_to(root)) or "."
        rows.append(row)
    key = lambda r: tuple(
        (r.get(k) is None, str(r.get(k)) if not isinstance(r.get(k), int) else r.get(k))
        for k in ("norm", "model", "data", "batch_size", "seed")
    )
    return sorted(rows, key=key)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return "-" if value is None else str(value)


def to_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """A markdown table of ``columns``."""
    from normzoo.cli import format_table

    return format_table([{c: _cell(r.get(c)) for c in columns} for r in rows])


def write_csv(
    rows: Sequence[dict[str, Any]], path: str | Path, columns: Sequence[str] = DEFAULT_COLUMNS
) -> Path:
    """Write ``columns`` of ``rows`` as CSV to ``path``; return the path."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: r.get(c) for c in columns} for r in rows)
    return path


def summarize(
    folder: str | Path, csv_path: str | Path | None = None, columns: Sequence[str] = DEFAULT_COLUMNS
) -> tuple[str, Path]:
    """Collect the runs under ``folder``; write the CSV (default ``<folder>/summary.csv``);
    return the markdown table and the CSV's path."""
    rows = collect(folder)
    if not rows:
        raise FileNotFoundError(f"no {METRICS_FILE} under {folder}: is it a normzoo-train output?")
    out = write_csv(rows, csv_path or Path(folder) / "summary.csv", columns)
    return to_markdown(rows, columns), out
