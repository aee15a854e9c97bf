"""The built wheel: what ``pip install normzoo`` (not editable) gets. The configs live in
``conf/`` at the repository root and ship as ``normzoo.conf`` (``setup.py``), the native
kernels' sources with ``normzoo._native`` (compiled on first use)."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_every_config_and_kernel_source(tmp_path):
    """Every config and C source in the wheel, nothing of the repository's tooling, and no
    setuptools warning of a folder it would drop (each config group is a listed package)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-v", "-w", str(tmp_path)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert "absent from the `packages` configuration" not in out.stdout + out.stderr
    wheel = next(tmp_path.glob("normzoo-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = ROOT / "conf"
    configs = {f"normzoo/conf/{p.relative_to(conf).as_posix()}" for p in conf.rglob("*.yaml")}
    assert len(configs) > 20 and "normzoo/conf/train.yaml" in configs
    assert configs <= names, sorted(configs - names)
    native = ROOT / "normzoo" / "_native"
    sources = {f"normzoo/_native/{p.name}" for p in native.glob("*.[ch]*")}
    assert "normzoo/_native/nz_simd.h" in sources
    assert sources and sources <= names, sorted(sources - names)
    assert not any(n.startswith(("tests/", "scripts/", "conf/")) for n in names)
