"""Run an experiment's sweep, record its CSV, draw its figures, update its page.

    python scripts/experiment.py batch_size --scale quick       # one experiment
    python scripts/experiment.py all --scale quick              # every experiment, in order
    python scripts/experiment.py batch_size --collect-only      # re-read the last sweep
    python scripts/experiment.py --list

Each experiment runs ``normzoo-train -m experiment=<preset> ...`` sweeps (see
``scripts/experiments/``), ``--jobs`` processes at a time, one thread each; the run folders
go to ``multirun/experiments/<name>/<scale>/``, the collected rows to
``docs/data/<name>.csv`` (rows of other scales are kept), the wall time to
``docs/data/timings.csv``; then ``scripts/make_docs.py`` regenerates figures and pages.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from experiments import common  # noqa: E402
from experiments.registry import EXPERIMENTS  # noqa: E402


def smoke(overrides: list[str]) -> list[str]:
    """``overrides`` shrunk to a seconds-long check: one seed, one epoch, a few batches."""
    out = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+")
        if key == "seed":
            o = "seed=0"
        elif key == "trainer.max_epochs":
            o = "trainer.max_epochs=1"
        elif key == "trainer.limit_train_batches":
            continue
        elif key == "trainer.val_check_interval":
            o = "trainer.val_check_interval=3"
        out.append(o)
    return [*out, "trainer.limit_train_batches=6"]


def run_one(name: str, scale_name: str, jobs: int, collect_only: bool, is_smoke: bool) -> None:
    """Run (unless ``collect_only``) and collect one experiment at one scale."""
    exp = EXPERIMENTS[name]
    scale = exp.scales[scale_name]
    sweep_root = common.RUNS / name / (scale_name + ("-smoke" if is_smoke else ""))
    if not collect_only:
        if sweep_root.exists():
            shutil.rmtree(sweep_root)
        invocations = exp.invocations(scale)
        if is_smoke:
            invocations = [smoke(list(o)) for o in invocations]
        print(f"[{name}] {len(invocations)} sweep(s), {jobs} at a time -> {sweep_root}")
        load_start = common.load_average()
        wall = common.run_invocations(invocations, sweep_root, jobs=jobs)
        load = f"{load_start} / {common.load_average()}"
        runs = sum(1 for _ in common.run_dirs(sweep_root))
        if not is_smoke:
            common.record_timing(name, scale_name, wall, runs, jobs, load)
        print(f"[{name}] {runs} runs in {wall / 60:.1f} min")
    rows = exp.collect(sweep_root, scale)
    if not rows:
        raise SystemExit(f"[{name}] no runs found under {sweep_root}")
    kept = [r for r in exp.rows() if r.get("scale") != scale_name]
    common.write_csv(exp.csv, kept + rows, exp.fields)
    print(f"[{name}] {len(rows)} rows -> {exp.csv}")
    for path in exp.figures(exp.rows()):
        print(f"[{name}] figure {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"'all' or some of: {', '.join(EXPERIMENTS)}")
    parser.add_argument("--scale", default="quick", choices=("quick", "full"))
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes (default 2)")
    parser.add_argument("--collect-only", action="store_true", help="re-read the last sweep")
    parser.add_argument("--list", action="store_true", help="list the experiments")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a seconds-long check of the pipeline: one seed, one epoch, 6 batches per run; "
        "data and figures go to multirun/experiments/smoke-docs/, not docs/",
    )
    args = parser.parse_args(argv)
    if args.list or not args.names:
        for exp in EXPERIMENTS.values():
            print(f"{exp.name:12s} {exp.title}  (docs/experiments/{exp.page})")
        return 0
    names = list(EXPERIMENTS) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment(s) {unknown}; choose from {list(EXPERIMENTS)}")
    if args.smoke:
        common.DATA = common.RUNS / "smoke-docs" / "data"
        common.FIGURES = common.RUNS / "smoke-docs" / "figures"
    for name in names:
        run_one(name, args.scale, args.jobs, args.collect_only, args.smoke)
    if args.smoke:
        return 0
    import make_docs

    return make_docs.main([])


if __name__ == "__main__":
    sys.exit(main())
