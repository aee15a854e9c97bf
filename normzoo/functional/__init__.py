"""The math of every norm, written from the papers' definitions.

One pure function per norm: no modules and no hidden state. Running statistics come in as
arguments and go out as results, so a module (``normzoo.norms``) owns the state and this
package owns the arithmetic. These functions are the ``impl="reference"`` path of the modules
and the ground truth the fast paths are tested against.
"""

from normzoo.functional._stats import reduce_dims, stable_var_mean
from normzoo.functional.batch import batch_norm
from normzoo.functional.batch_renorm import batch_renorm
from normzoo.functional.evonorm import evonorm_b0, evonorm_s0
from normzoo.functional.frn import filter_response_norm
from normzoo.functional.frozen_batch import frozen_batch_norm
from normzoo.functional.ghost_batch import ghost_batch_norm
from normzoo.functional.group import group_norm
from normzoo.functional.instance import instance_norm
from normzoo.functional.layer import layer_norm
from normzoo.functional.rms import rms_norm
from normzoo.functional.switchable import switchable_norm
from normzoo.functional.sync_batch import sync_batch_norm

__all__ = [
    "batch_norm",
    "batch_renorm",
    "evonorm_b0",
    "evonorm_s0",
    "filter_response_norm",
    "frozen_batch_norm",
    "ghost_batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "reduce_dims",
    "rms_norm",
    "stable_var_mean",
    "switchable_norm",
    "sync_batch_norm",
]
