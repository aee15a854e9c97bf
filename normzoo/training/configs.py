"""Hydra configs generated from the registry, so that every registered norm (plugins
included) is a ``norm=<name>`` option whose fields are the norm's own arguments.

For each registered norm and alias this stores two nodes in Hydra's ConfigStore:

- ``norm_registry/<name>``: the schema that the YAML files of ``conf/norm/`` extend;
- ``norm/<name>``: the same node, so ``norm=<name>`` works without a YAML file; names that
  have a YAML file in ``conf/norm/`` (e.g. ``bn``) are left to that file.

A node is a partial of ``normzoo.create`` with the canonical name as its first argument and
every keyword argument of the norm's constructor at its default, read from the signature:
nothing is written twice.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from hydra.core.config_store import ConfigStore

import normzoo
from normzoo.registry import accepted_kwargs

_YAML_SCALARS = (type(None), bool, int, float, str)

#: The installed config package (``conf/`` in the repository).
CONFIG_MODULE = "normzoo.conf"


def yaml_options(group: str) -> set[str]:
    """The options of a config group that have a YAML file in the installed configs."""
    folder = files(CONFIG_MODULE) / group
    return {p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")}


def norm_node(name: str) -> dict[str, Any]:
    """The config node of the registered norm ``name``: a partial of ``normzoo.create``."""
    entry = normzoo.info(name)
    fields = {k: v for k, v in accepted_kwargs(entry.cls).items() if isinstance(v, _YAML_SCALARS)}
    return {"_target_": "normzoo.create", "_partial_": True, "_args_": [entry.name], **fields}


def register_configs() -> None:
    """Store the norm nodes of every registered norm (call before composing a config)."""
    cs = ConfigStore.instance()
    with_yaml = yaml_options("norm")
    for name in normzoo.available():
        entry = normzoo.info(name)
        node = norm_node(name)
        for key in (entry.name, *entry.aliases):
            cs.store(group="norm_registry", name=key, node=node, provider="normzoo")
            if key not in with_yaml:
                cs.store(group="norm", name=key, node=node, provider="normzoo")
