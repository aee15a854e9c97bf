"""Small reference networks whose norm layers come from the registry.

Every constructor takes ``input_shape`` (one sample's shape), ``num_classes``, ``norm`` (a
registered name, a ``Norm`` class or a partial called with each layer's width) and
``norm_position`` (``"before_act"`` or ``"after_act"``). No Lightning here.
"""

from normzoo.models.converted import converted
from normzoo.models.convnet import ConvNet, ConvNet1d, ConvNet2d
from normzoo.models.layers import NORM_POSITIONS, make_norm, norm_act
from normzoo.models.mlp import MLP
from normzoo.models.resnet import PreActBlock, ResNet

__all__ = [
    "MLP",
    "NORM_POSITIONS",
    "ConvNet",
    "ConvNet1d",
    "ConvNet2d",
    "PreActBlock",
    "ResNet",
    "converted",
    "make_norm",
    "norm_act",
]
