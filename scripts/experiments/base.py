"""``Experiment``: the shape every experiment driver has.

An experiment names its Hydra preset (``conf/experiment/<preset>.yaml``), its scales, the
sweep it runs at a scale (a list of ``normzoo-train -m`` override lists), how it turns the
run folders into rows of its CSV (``docs/data/<name>.csv``), and how it turns that CSV into
figures (``docs/figures/<name>*.png``) and the generated blocks of its page
(``docs/experiments/<page>``). Figures and tables read only the CSV, so
``scripts/make_docs.py`` regenerates them without running anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from experiments import common
from experiments.common import Row, Scale


class Experiment:
    """Base class of the experiment drivers (see the module doc)."""

    #: Short id: the CSV's and the figures' file stem, the driver's argument.
    name: str = ""
    #: The page title and its file in ``docs/experiments/``.
    title: str = ""
    page: str = ""
    #: The Hydra preset in ``conf/experiment/``.
    preset: str = ""
    scales: dict[str, Scale] = {}  # noqa: RUF012 - class-level constant

    # -- running ----------------------------------------------------------------------------
    def invocations(self, scale: Scale) -> list[list[str]]:
        """The override lists of the ``normzoo-train -m`` calls of this scale."""
        raise NotImplementedError

    def collect_run(self, run_dir: Path) -> list[Row]:
        """The CSV rows of one run folder (default: its ``metrics.json`` as one row)."""
        return [common.metrics(run_dir)]

    def collect(self, sweep_root: Path, scale: Scale) -> list[Row]:
        """Every row of the sweep under ``sweep_root``, tagged with the scale."""
        rows = []
        for run_dir in common.run_dirs(sweep_root):
            for row in self.collect_run(run_dir):
                rows.append({"scale": scale.name, **row})
        return rows

    @property
    def csv(self) -> Path:
        """The experiment's recorded data."""
        return common.DATA / f"{self.name}.csv"

    #: The columns written to the CSV (``None``: all).
    fields: Sequence[str] | None = None

    def rows(self) -> list[Row]:
        """The recorded rows (empty before the first run)."""
        return common.read_csv(self.csv)

    # -- docs -------------------------------------------------------------------------------
    def figures(self, rows: list[Row]) -> list[Path]:
        """Draw the figures from ``rows``; return their paths."""
        return []

    def blocks(self, rows: list[Row]) -> dict[str, Callable[[], str]]:
        """The generated blocks of the page, keyed ``<name>/<block>``."""
        return {}

    def norm_result(self, rows: list[Row], norm: str) -> str | None:
        """A short markdown summary of ``norm``'s results, for its norm page."""
        return None

    def figure_path(self, suffix: str) -> Path:
        """``docs/figures/<name>_<suffix>.png``."""
        return common.FIGURES / f"{self.name}_{suffix}.png"

    def command(self, scale: str = "quick") -> str:
        """The command that reproduces the experiment."""
        return f"python scripts/experiment.py {self.name} --scale {scale}"

    def timing_block(self) -> str:
        """How long each scale took and on what, from ``docs/data/timings.csv``."""
        rows = common.timing_rows(self.name)
        if not rows:
            return "Not run yet.\n"
        from docsgen.markdown import table

        return table(
            [
                "scale",
                "runs",
                "wall time",
                "parallel jobs",
                "load average (start / end)",
                "machine",
                "date",
            ],
            [
                (
                    r["scale"],
                    r["runs"],
                    f"{float(r['wall_s']) / 60:.1f} min",
                    r["parallel_jobs"],
                    r.get("load_avg_start_end", "?"),
                    r["machine"],
                    r["date"],
                )
                for r in rows
            ],
            align="lrrrrll",
        )

    def all_blocks(self) -> dict[str, Callable[[], str]]:
        """The page's blocks, the common ones (timing, command) included."""
        rows = self.rows()
        blocks = {
            f"{self.name}/timing": self.timing_block,
            f"{self.name}/command": lambda: (
                f"```bash\n{self.command('quick')}     # the recorded runs\n"
                f"{self.command('full')}      # the full scale (meant for a GPU; not run)\n```\n"
            ),
        }
        blocks.update(self.blocks(rows))
        return blocks
