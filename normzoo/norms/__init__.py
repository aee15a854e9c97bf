"""The norm modules: one file per family, each class a ``normzoo.Norm``."""

from normzoo.norms.base import AXES, Norm
from normzoo.norms.batch import BatchNorm
from normzoo.norms.group import GroupNorm
from normzoo.norms.identity import Identity
from normzoo.norms.instance import InstanceNorm
from normzoo.norms.layer import LayerNorm

__all__ = ["AXES", "BatchNorm", "GroupNorm", "Identity", "InstanceNorm", "LayerNorm", "Norm"]
