"""The ``normzoo`` command line: ``normzoo list``, ``normzoo summarize``, ``normzoo bench``
(and the subcommands other modules add).

Each subcommand imports what it needs when it runs, so ``normzoo list`` stays as light as
``import normzoo``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import normzoo
from normzoo.registry import accepted_kwargs


def _axes(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "-"


def registry_rows() -> list[dict[str, str]]:
    """One row per registered norm: what ``normzoo list`` prints."""
    rows = []
    for name in normzoo.available():
        entry = normzoo.info(name)
        cls = entry.cls
        params = ", ".join(f"{k}={v!r}" for k, v in accepted_kwargs(cls).items())
        rows.append(
            {
                "name": name,
                "aliases": ", ".join(entry.aliases) or "-",
                "statistics per": _axes(cls.statistics_per),
                "reduced over": _axes(cls.reduces_over),
                "batch stats": "yes" if cls.uses_batch_stats else "no",
                "parameters (defaults)": params,
                "plugin": entry.plugin or "-",
            }
        )
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    """A markdown table (readable as plain text too)."""
    if not rows:
        return "(empty)"
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    line = lambda vals: (
        "| " + " | ".join(str(v).ljust(widths[c]) for c, v in zip(cols, vals, strict=True)) + " |"
    )
    out = [line(cols), "| " + " | ".join("-" * widths[c] for c in cols) + " |"]
    out += [line([r[c] for c in cols]) for r in rows]
    return "\n".join(out)


def _cmd_list(args: argparse.Namespace) -> int:
    print(format_table(registry_rows()))
    return 0


def _cmd_summarize(args: argparse.Namespace) -> int:
    from normzoo.summary import DEFAULT_COLUMNS, summarize

    columns = args.columns.split(",") if args.columns else DEFAULT_COLUMNS
    try:
        table, csv_path = summarize(args.folder, args.csv, columns)
    except FileNotFoundError as exc:
        print(f"normzoo summarize: {exc}", file=sys.stderr)
        return 1
    print(table)
    print(f"\n(CSV: {csv_path})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    summary = " ".join(__doc__.split("\n\n")[0].split())  # the first paragraph, one line
    parser = argparse.ArgumentParser(prog="normzoo", description=summary.replace("``", "`"))
    parser.add_argument("--version", action="version", version=f"normzoo {normzoo.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="print the registry of norms as a table")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser(
        "summarize",
        help="collect every metrics.json under a folder (e.g. a multirun) into one table",
    )
    p.add_argument("folder", help="a normzoo-train output folder, e.g. multirun/<date>/<time>")
    p.add_argument("--csv", help="where to write the CSV (default: <folder>/summary.csv)")
    p.add_argument("--columns", help="comma-separated metrics.json fields to show")
    p.set_defaults(func=_cmd_summarize)
    from normzoo import bench  # (torch and normzoo only: as light as this module)

    bench.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
