"""A multilayer perceptron: flatten, then linear -> norm/activation blocks, then a classifier."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from normzoo.models.layers import check_norm_position, norm_act
from normzoo.registry import NormSpec


class MLP(nn.Module):
    """Flattened input, ``len(widths)`` hidden layers, each linear + norm + ReLU.

    The norms see ``(N, C)`` features (no spatial dims), so norms that need spatial dims
    (InstanceNorm) are refused at construction.

    Args:
        input_shape: one sample's shape, e.g. ``(1, 8, 8)``; it is flattened.
        num_classes: outputs of the classifier.
        norm: a registered name, a ``Norm`` class or a partial, called with each width.
        norm_position: ``"before_act"`` or ``"after_act"``.
        widths: the hidden layers' widths.
        dropout: dropout probability before the classifier.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        norm: NormSpec = "bn",
        norm_position: str = "before_act",
        widths: Sequence[int] = (256, 256),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_norm_position(norm_position)
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(int(s) for s in input_shape)
        for i, out in enumerate(widths):
            layers.append(nn.Linear(width, out))
            layers += norm_act(
                norm, out, nn.ReLU, norm_position, where=f"hidden.{i}", spatial_dims=0
            )
            width = out
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.features(x)))
