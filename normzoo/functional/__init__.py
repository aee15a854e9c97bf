"""The math of every norm, written from the papers' definitions.

One pure function per norm: no modules and no hidden state. Running statistics come in as
arguments and go out as results, so a module (``normzoo.norms``) owns the state and this
package owns the arithmetic. These functions are the ``impl="reference"`` path of the modules
and the ground truth the fast paths are tested against.
"""

from normzoo.functional._stats import reduce_dims, stable_var_mean
from normzoo.functional.batch import batch_norm
from normzoo.functional.group import group_norm
from normzoo.functional.instance import instance_norm
from normzoo.functional.layer import layer_norm

__all__ = [
    "batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "reduce_dims",
    "stable_var_mean",
]
