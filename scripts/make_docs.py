"""Regenerate every generated part of the docs from the registry and the recorded data.

    python scripts/make_docs.py            # norm pages, axes figures, experiment figures+tables
    python scripts/make_docs.py --check    # exit 1 if a generated page is out of date

Nothing here runs an experiment: the drivers (``scripts/experiment.py``) record CSVs in
``docs/data/``; this script only reads them. Generated are:

- ``docs/norms/*.md`` and ``docs/figures/axes/*.png``: one page per registered norm;
- the ``nav`` entries of the norm pages in ``mkdocs.yml``;
- each experiment's figures in ``docs/figures/`` and the generated blocks
  (``<!-- generated: KEY -->``) of every page: tables from the CSVs, and the output of
  the code snippets (``docsgen/snippets.py``) that the pages show.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from docsgen import norm_pages, snippets  # noqa: E402
from docsgen.markdown import block_keys, fill_blocks  # noqa: E402
from experiments import registry as experiments  # noqa: E402

DOCS = ROOT / "docs"
MKDOCS = ROOT / "mkdocs.yml"
NAV = re.compile(r"(      # NORMS-NAV[^\n]*\n)(.*?)(      # END NORMS-NAV)", re.S)


def mkdocs_text() -> str:
    """``mkdocs.yml`` with the norm pages' nav entries regenerated."""
    text = MKDOCS.read_text()
    entries = "\n".join(norm_pages.nav_entries()) + "\n"
    return NAV.sub(lambda m: m.group(1) + entries + m.group(3), text)


def page_texts() -> dict[Path, str]:
    """Every generated or partly generated markdown page, as it should read now."""
    pages: dict[Path, str] = {}
    for name in norm_pages.normzoo.available():
        pages[DOCS / "norms" / f"{name}.md"] = norm_pages.render(name, experiments.norm_results)
    pages[DOCS / "norms" / "index.md"] = norm_pages.render_index()
    generators = {**experiments.block_generators(), **snippets.generators()}
    for page in sorted(DOCS.rglob("*.md")):
        if page.parent.name != "norms" and block_keys(page.read_text()):
            pages[page] = fill_blocks(page.read_text(), generators)
    pages[MKDOCS] = mkdocs_text()
    return pages


def stale_pages() -> list[Path]:
    """The pages whose text differs from what the registry and recorded data give."""
    return [p for p, text in page_texts().items() if not p.exists() or p.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale pages")
    parser.add_argument("--no-figures", action="store_true", help="pages and tables only")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages()
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)}")
        return 1 if stale else 0
    if not args.no_figures:
        from docsgen.axes import draw_cube

        for name in norm_pages.normzoo.available():
            draw_cube(norm_pages.normzoo.get(name), DOCS / "figures" / "axes" / f"{name}.png")
        for path in experiments.draw_all_figures():
            print(f"figure: {path.relative_to(ROOT)}")
    for path, text in page_texts().items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
