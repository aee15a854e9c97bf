"""What every experiment driver shares: running Hydra sweeps of ``normzoo-train``, collecting
the runs' ``metrics.json`` (and per-step CSVs) into one CSV, timing, and small statistics.

A driver describes its sweep as a list of *invocations*, each the override list of one
``normzoo-train -m ...`` call (Hydra's multirun runs its jobs one after another in one
process, so the import cost is paid once per invocation). ``run_invocations`` runs them,
``jobs`` at a time, each process on one thread (``OMP_NUM_THREADS=1``: for these small
models one thread per process is the fastest use of the cores).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
DATA = DOCS / "data"
FIGURES = DOCS / "figures"
RUNS = ROOT / "multirun" / "experiments"
TIMINGS = DATA / "timings.csv"

Row = dict[str, Any]


@dataclass
class Scale:
    """The size of one scale of an experiment."""

    name: str
    seeds: Sequence[int]
    settings: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.settings[key]


def train_command() -> list[str]:
    """The ``normzoo-train`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "normzoo-train"
    if script.exists():
        return [str(script)]
    found = shutil.which("normzoo-train")
    if found:
        return [found]
    return [sys.executable, "-m", "normzoo.train"]


def run_invocations(
    invocations: Sequence[Sequence[str]],
    sweep_root: Path,
    jobs: int = 2,
    log: Path | None = None,
) -> float:
    """Run each override list as ``normzoo-train -m <overrides>``; return the wall time.

    Invocation ``i`` writes under ``sweep_root/<i>``; its output goes to ``log`` (appended).
    A failing invocation is reported (its finished runs are kept); if every invocation
    fails, ``RuntimeError``.
    """
    sweep_root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    log = log or sweep_root / "sweep.log"

    def one(i: int) -> tuple[int, int]:
        cmd = [
            *train_command(),
            "-m",
            *invocations[i],
            f"hydra.sweep.dir={sweep_root / str(i)}",
            "hydra.sweep.subdir=${hydra.job.num}",
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{out.stdout[-4000:]}\n{out.stderr[-8000:]}\n")
        return i, out.returncode

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(one, range(len(invocations))))
    wall = time.perf_counter() - start
    failed = [i for i, rc in results if rc != 0]
    if failed and len(failed) == len(results):
        raise RuntimeError(f"every invocation failed; see {log}")
    for i in failed:
        print(f"  invocation {i} failed ({' '.join(invocations[i])}); see {log}")
    return wall


def run_dirs(sweep_root: Path) -> Iterator[Path]:
    """Every run folder (one with a ``metrics.json``) under ``sweep_root``."""
    yield from sorted(p.parent for p in sweep_root.rglob("metrics.json"))


def overrides(run_dir: Path) -> dict[str, str]:
    """The run's command-line overrides, from Hydra's ``.hydra/overrides.yaml``."""
    path = run_dir / ".hydra" / "overrides.yaml"
    result: dict[str, str] = {}
    if not path.exists():
        return result
    for line in path.read_text().splitlines():
        item = line.strip().removeprefix("- ").strip("'\"")
        if "=" in item:
            key, value = item.split("=", 1)
            result[key.lstrip("+~")] = value
    return result


def metrics(run_dir: Path) -> Row:
    """The run's ``metrics.json``."""
    return json.loads((run_dir / "metrics.json").read_text())


def step_log(run_dir: Path) -> list[Row]:
    """The run's per-step CSV metrics (Lightning's CSVLogger ``metrics.csv``), as rows."""
    candidates = sorted(run_dir.rglob("metrics.csv"))
    if not candidates:
        return []
    with candidates[0].open() as f:
        return [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def read_csv(path: Path) -> list[Row]:
    """Rows of a CSV, numbers parsed (ints stay ints, empty cells are dropped)."""
    if not path.exists():
        return []
    with path.open() as f:
        return [{k: parse(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def parse(value: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, anything else unchanged."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def fmt(value: Any) -> str:
    """Floats with 5 significant digits, the rest as str."""
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def write_csv(path: Path, rows: Sequence[Row], fields: Sequence[str] | None = None) -> Path:
    """Write ``rows`` to ``path`` (compact: floats with 5 significant digits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(fields or dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: fmt(r[k]) for k in fields if k in r})
    return path


def machine() -> str:
    """A short description of this machine: CPU model and usable cores."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores"


def load_average() -> str:
    """The 1-minute load average now (how busy the shared machine was)."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def record_timing(
    experiment: str, scale: str, wall_s: float, runs: int, jobs: int, load: str = ""
) -> None:
    """Add (or replace) this experiment's row of ``docs/data/timings.csv``.

    ``load`` is the load average at the start and the end of the run ("4.1 / 6.0"): the
    machine may be shared, and the wall time means little without it.
    """
    rows = [r for r in read_csv(TIMINGS) if (r["experiment"], r["scale"]) != (experiment, scale)]
    rows.append(
        {
            "experiment": experiment,
            "scale": scale,
            "runs": runs,
            "wall_s": round(wall_s, 1),
            "parallel_jobs": jobs,
            "load_avg_start_end": load or load_average(),
            "machine": machine(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
    )
    rows.sort(key=lambda r: (r["experiment"], r["scale"]))
    write_csv(TIMINGS, rows)


def timing_rows(experiment: str) -> list[Row]:
    """The recorded timings of ``experiment``."""
    return [r for r in read_csv(TIMINGS) if r["experiment"] == experiment]


# -- statistics ------------------------------------------------------------------------------
def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan, 0
    m = sum(vals) / len(vals)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, s, len(vals)


def group(rows: Iterable[Row], *keys: str) -> dict[tuple[Any, ...], list[Row]]:
    """Rows grouped by the values of ``keys``, in first-seen order."""
    out: dict[tuple[Any, ...], list[Row]] = {}
    for r in rows:
        out.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    return out


def pm(values: Iterable[float], scale: float = 1.0, digits: int = 1) -> str:
    """``"mean ± std"`` of the finite values times ``scale`` (``"-"`` if none)."""
    m, s, n = mean_std(values)
    if n == 0:
        return "-"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


# -- norms -----------------------------------------------------------------------------------
#: Names of norms that are configs rather than registry entries (``conf/norm/*.yaml``).
EXTRA_NORMS = {"NoisyBatchNorm": "noisybn"}


def canonical(norm: str) -> str:
    """The registry's canonical name of ``norm`` (or its name in ``EXTRA_NORMS``)."""
    import normzoo

    if norm in EXTRA_NORMS:
        return EXTRA_NORMS[norm]
    try:
        return normzoo.info(norm).name
    except KeyError:
        return norm


def label(norm: str) -> str:
    """A display name: the class name of a registered norm (``BatchNorm``), ``none``..."""
    import normzoo

    if norm == "identity":
        return "no norm"
    if norm == "noisybn":
        return "noisy BN"
    try:
        return normzoo.get(norm).__name__
    except KeyError:
        return norm


def registered(names: Iterable[str]) -> list[str]:
    """The canonical names of those of ``names`` that are registered now (the zoo's norms,
    where present)."""
    import normzoo

    out = []
    for n in names:
        with contextlib.suppress(KeyError):
            out.append(normzoo.info(n).name)
    return out


def halves(values: Sequence[Any], parts: int = 2) -> list[list[Any]]:
    """``values`` dealt into ``parts`` lists (round robin), so parallel sweeps balance."""
    return [list(values[i::parts]) for i in range(parts) if values[i::parts]]


def joined(values: Iterable[Any]) -> str:
    """Comma-joined sweep values for a ``-m`` override."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
