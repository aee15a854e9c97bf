"""The docs: generated pages current, figures present, tables equal to their CSVs, and the
generators (axes figures, experiment collection) doing what the pages say."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import normzoo

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "scripts"))

pytest.importorskip("matplotlib")

import make_docs  # noqa: E402
from docsgen import axes, markdown, norm_pages  # noqa: E402
from experiments import common  # noqa: E402
from experiments.registry import EXPERIMENTS  # noqa: E402

IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_every_page_references_only_existing_figures():
    missing = []
    for page in pages():
        for target in IMAGE.findall(page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).resolve().exists():
                missing.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not missing, "pages reference missing figures:\n" + "\n".join(missing)


def test_generated_pages_and_tables_match_the_registry_and_the_csvs():
    stale = make_docs.stale_pages()
    assert not stale, (
        "out of date (a table disagrees with its CSV, or the registry changed); run "
        "`python scripts/make_docs.py`: " + ", ".join(str(p.relative_to(ROOT)) for p in stale)
    )


def test_a_tampered_table_is_detected():
    generators = make_docs.experiments.block_generators()
    tampered_any = False
    for exp in EXPERIMENTS.values():
        text = (DOCS / "experiments" / exp.page).read_text()
        block = markdown.BLOCK.search(text.split("## Results", 1)[-1])
        numbers = re.search(r"\d+\.\d+", block.group("body")) if block else None
        if not numbers:
            continue
        body = block.group("body")
        wrong = body.replace(numbers.group(0), numbers.group(0) + "1", 1)
        tampered = text.replace(body, wrong, 1)
        assert tampered != text
        restored = markdown.fill_blocks(tampered, generators)
        assert restored == markdown.fill_blocks(text, generators) != tampered, exp.page
        tampered_any = True
    if not tampered_any:
        pytest.skip("no experiment has recorded results yet")


def test_internals_guide_maps_every_fast_path_file_and_switch():
    """docs/guides/internals.md names every private module of the fast paths, every native
    source, every ``NORMZOO_*`` variable the package reads and every threshold it cites (as a
    constant that exists): a new file or switch fails here until the map has it."""
    guide = (DOCS / "guides" / "internals.md").read_text()
    package = ROOT / "normzoo"
    files = [*sorted((package / "norms").glob("_*.py")), *sorted((package / "_native").iterdir())]
    for path in files:
        if (path.name == "__init__.py" and path.parent.name == "norms") or path.suffix == ".pyc":
            continue
        if path.is_file():
            assert path.name in guide, f"docs/guides/internals.md does not name {path.name}"
    source = "\n".join(p.read_text() for p in package.rglob("*.py"))
    switches = set(re.findall(r"NORMZOO_[A-Z_]+", source))
    assert {"NORMZOO_NATIVE", "NORMZOO_TRITON", "NORMZOO_COMPILE"} <= switches
    for name in switches:
        assert f"`{name}" in guide, f"docs/guides/internals.md does not list {name}"
    for constant in set(re.findall(r"`([A-Z][A-Z0-9_]+_NUMEL)`", guide)):
        assert re.search(rf"^{constant} = ", source, re.M), f"{constant} is not a constant"
    assert "internals.md" in (ROOT / "mkdocs.yml").read_text()


def test_every_registered_norm_has_a_page_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    for name in normzoo.available():
        assert (DOCS / "norms" / f"{name}.md").exists(), name
        assert (DOCS / "figures" / "axes" / f"{name}.png").exists(), name
        assert f"norms/{name}.md" in nav, name


def test_every_experiment_page_has_a_figure_and_its_generated_blocks():
    for exp in EXPERIMENTS.values():
        text = (DOCS / "experiments" / exp.page).read_text()
        assert set(exp.all_blocks()) <= set(markdown.block_keys(text)), exp.name
        if exp.rows():
            assert IMAGE.search(text), f"{exp.page} shows no figure"


def test_unknown_generated_block_is_an_error():
    with pytest.raises(markdown.MissingGeneratorError, match="nope"):
        markdown.fill_blocks("<!-- generated: nope -->\nx\n<!-- end generated -->", {})


def test_table_renders_markdown():
    assert markdown.table(["a", "b"], [[1, 2]]) == "| a | b |\n| :-- | --: |\n| 1 | 2 |\n"


# -- the cube figure ---------------------------------------------------------------------
def shaded(cls):
    sets = axes.normalized_set(cls)
    return None if sets is None else tuple(np.argwhere(sets[0]).max(axis=0) + 1)


def test_cube_shades_what_each_core_norm_normalizes_over():
    n, c, s = axes.SHAPE
    assert shaded(normzoo.get("bn")) == (n, 1, s)  # one channel, every sample and position
    assert shaded(normzoo.get("ln")) == (1, c, s)  # one sample, everything else
    assert shaded(normzoo.get("in")) == (1, 1, s)  # one sample and channel
    assert shaded(normzoo.get("gn")) == (1, axes.GROUP, s)  # one sample, one group
    assert axes.normalized_set(normzoo.get("none")) is None


def test_cube_handles_fixed_and_mixed_statistics():
    class Frozen(normzoo.Norm):
        statistics_per = ("channel",)
        reduces_over = ()

    class Mixed(normzoo.Norm):  # SwitchableNorm: IN, LN and BN statistics mixed
        statistics_per = ("batch", "channel")
        reduces_over = ("batch", "channel", "spatial")

    n, _, s = axes.SHAPE
    assert shaded(Frozen) == (n, 1, s)
    dark, light = axes.normalized_set(Mixed)
    assert dark.sum() == s and light.sum() == dark.size - s
    assert "Light" in axes.describe(Mixed) and "Light" not in axes.describe(Frozen)


def test_norm_page_takes_formula_and_parameters_from_the_class():
    text = norm_pages.render("groupnorm")
    assert "$$" in text and r"\mathrm{Var}" in text
    assert "| `num_groups` | `None` |" in text
    assert "../figures/axes/groupnorm.png" in text
    assert "::: normzoo.norms.group.GroupNorm" in text


# -- collecting runs -----------------------------------------------------------------------
def fake_run(folder: Path, metrics: dict, overrides: list[str]) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


def test_gn_groups_collects_the_swept_value_from_the_overrides(tmp_path):
    base = {"norm": "groupnorm", "seed": 0, "test_acc": 0.9, "best_val_acc": 0.9}
    fake_run(tmp_path / "0" / "0", base, ["norm=gn", "norm.num_groups=4", "seed=0"])
    fake_run(tmp_path / "1" / "0", {**base, "test_acc": 0.8}, ["norm.group_size=1"])
    exp = EXPERIMENTS["gn_groups"]
    rows = exp.collect(tmp_path, exp.scales["quick"])
    assert sorted((r["variant"], r["value"]) for r in rows) == [("group_size", 1), ("groups", 4)]
    assert exp.errors(rows, "group_size") == {1: [pytest.approx(20.0)]}


def test_convergence_finds_the_first_step_at_target():
    from experiments.convergence import first_step_reaching

    assert first_step_reaching([(30, 0.95), (10, 0.5), (20, 0.91)], 0.9) == 20
    assert np.isnan(first_step_reaching([(10, 0.5)], 0.9))


def test_mean_std_ignores_missing_values():
    assert common.mean_std([1.0, 3.0, float("nan")]) == (2.0, pytest.approx(2**0.5), 2)
    assert common.pm([], 100) == "-"


def test_the_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "norms" / "batchnorm" / "index.html").exists()
