"""Packaging details that pyproject.toml cannot express: the configs in ``conf/`` (at the
repository root, where the design keeps them) ship inside the package as ``normzoo.conf``, each
config group folder (``conf/norm``, ...) listed as a subpackage of it, as setuptools asks of
every importable folder; the native kernels' C sources and headers ship with
``normzoo._native`` (compiled on first use, not here)."""

from setuptools import find_namespace_packages, find_packages, setup

GROUPS = find_namespace_packages(where="conf", exclude=["__pycache__", "*.__pycache__"])
CONF = ["normzoo.conf", *(f"normzoo.conf.{group}" for group in GROUPS)]

setup(
    packages=[*find_packages(include=["normzoo", "normzoo.*"]), *CONF],
    package_dir={"normzoo.conf": "conf"},
    package_data={**{p: ["*.yaml"] for p in CONF}, "normzoo._native": ["*.c", "*.h", "*.cpp"]},
)
