"""normzoo: normalization layers for PyTorch behind one interface.

>>> import normzoo
>>> layer = normzoo.create("gn", 64)          # GroupNorm(64, num_groups=32)
>>> normzoo.available()                        # ['batchnorm', 'groupnorm', ...]
>>> model, report = normzoo.convert(model, "frozenbn")  # swap the norms of any model

``import normzoo`` imports torch and nothing heavier; the training system
(``normzoo.train``), the CLI and the docs tooling load their dependencies themselves.
"""

from normzoo.norms.base import Norm
from normzoo.registry import UnknownNormError, available, create, get, info, register
from normzoo.surgery import ConversionReport, convert, revert

__version__ = "0.1.0"

__all__ = [
    "ConversionReport",
    "Norm",
    "UnknownNormError",
    "__version__",
    "available",
    "convert",
    "create",
    "get",
    "info",
    "register",
    "revert",
]
