"""Plain ConvNets for 1-D and 2-D inputs: stages of conv -> norm/activation, then pooling."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from normzoo.models.layers import check_input_shape, check_norm_position, norm_act
from normzoo.registry import NormSpec

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d}
_AVGPOOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}


class ConvNet(nn.Module):
    """A ConvNet over ``spatial_dims`` (1 or 2) spatial dims.

    Each stage is ``convs_per_stage`` blocks of conv (``kernel_size``, same padding) + norm +
    ReLU; stages after the first start with a 2x max-pool. A global average pool and a linear
    classifier follow.

    Args:
        input_shape: one sample's shape, ``(C, L)`` for 1-D or ``(C, H, W)`` for 2-D.
        num_classes: outputs of the classifier.
        norm: a registered name, a ``Norm`` class or a partial, called with each width.
        norm_position: ``"before_act"`` or ``"after_act"``.
        widths: the output channels of each stage.
        convs_per_stage: conv blocks per stage.
        kernel_size: the convolutions' kernel size.
        dropout: dropout probability before the classifier.
        spatial_dims: 1 or 2.
        fuse_activation: whether each norm applies its ReLU itself (``Norm.fuse_activation``:
            fused into the native CPU kernels of BatchNorm, GroupNorm, InstanceNorm,
            LayerNorm, FrozenBatchNorm), an ``nn.Identity`` in the ReLU's place. ``"auto"``
            (default): where the norm's kernels fuse it (``before_act`` only; the values are
            the same as with a separate ``nn.ReLU``, to the bit); ``True``: every norm, which
            needs ``norm_position="before_act"`` and normzoo norms; ``False``: never.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        norm: NormSpec = "bn",
        norm_position: str = "before_act",
        widths: Sequence[int] = (32, 64),
        convs_per_stage: int = 2,
        kernel_size: int = 3,
        dropout: float = 0.0,
        spatial_dims: int = 2,
        fuse_activation: bool | str = "auto",
    ) -> None:
        super().__init__()
        if spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 1 or 2, got {spatial_dims!r}")
        check_norm_position(norm_position)
        name = f"convnet{spatial_dims}d"
        shape = check_input_shape(name, input_shape, spatial_dims)
        conv, pool = _CONV[spatial_dims], _MAXPOOL[spatial_dims]
        layers: list[nn.Module] = []
        channels = shape[0]
        for s, width in enumerate(widths):
            if s > 0:
                layers.append(pool(2))
            for c in range(convs_per_stage):
                layers.append(conv(channels, width, kernel_size, padding=kernel_size // 2))
                layers += norm_act(
                    norm,
                    width,
                    nn.ReLU,
                    norm_position,
                    where=f"stage{s}.conv{c}",
                    spatial_dims=spatial_dims,
                    fuse=fuse_activation,
                )
                channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(_AVGPOOL[spatial_dims](1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.pool(self.features(x))))


class ConvNet1d(ConvNet):
    """``ConvNet`` over sequences ``(C, L)``, e.g. MNIST-1D."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, **kwargs) -> None:
        super().__init__(input_shape, num_classes, spatial_dims=1, **kwargs)


class ConvNet2d(ConvNet):
    """``ConvNet`` over images ``(C, H, W)``, e.g. the 8x8 digits."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, **kwargs) -> None:
        super().__init__(input_shape, num_classes, spatial_dims=2, **kwargs)
