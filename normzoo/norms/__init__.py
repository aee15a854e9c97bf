"""The norm modules: one file per family, each class a ``normzoo.Norm``."""

from normzoo.norms.base import AXES, Norm
from normzoo.norms.batch import BatchNorm
from normzoo.norms.batch_renorm import BatchRenorm
from normzoo.norms.evonorm import EvoNormB0, EvoNormS0
from normzoo.norms.frn import FilterResponseNorm
from normzoo.norms.frozen_batch import FrozenBatchNorm
from normzoo.norms.ghost_batch import GhostBatchNorm
from normzoo.norms.group import GroupNorm
from normzoo.norms.identity import Identity
from normzoo.norms.instance import InstanceNorm
from normzoo.norms.layer import LayerNorm
from normzoo.norms.rms import RMSNorm
from normzoo.norms.switchable import SwitchableNorm
from normzoo.norms.sync_batch import SyncBatchNorm

__all__ = [
    "AXES",
    "BatchNorm",
    "BatchRenorm",
    "EvoNormB0",
    "EvoNormS0",
    "FilterResponseNorm",
    "FrozenBatchNorm",
    "GhostBatchNorm",
    "GroupNorm",
    "Identity",
    "InstanceNorm",
    "LayerNorm",
    "Norm",
    "RMSNorm",
    "SwitchableNorm",
    "SyncBatchNorm",
]
