"""Packaging details that pyproject.toml cannot express: the configs in ``conf/`` (at the
repository root, where the design keeps them) ship inside the package as ``normzoo.conf``; the
native kernels' C sources ship with ``normzoo._native`` (compiled on first use, not here)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["normzoo", "normzoo.*"]), "normzoo.conf"],
    package_dir={"normzoo.conf": "conf"},
    package_data={"normzoo.conf": ["*.yaml", "*/*.yaml"], "normzoo._native": ["*.c", "*.cpp"]},
)
