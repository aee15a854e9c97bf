"""A small pre-activation ResNet for images (He et al., "Identity Mappings in Deep Residual
Networks", ECCV 2016): each residual branch is (norm/activation -> conv) twice."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from normzoo.models.layers import check_input_shape, check_norm_position, norm_act
from normzoo.registry import NormSpec


class PreActBlock(nn.Module):
    """``x + conv(na(conv(na(x))))`` where ``na`` is norm + ReLU in ``norm_position`` order.

    With ``stride`` 2 or a change of width, the shortcut is a 1x1 conv of the first
    ``na(x)``, as in the paper.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        norm: NormSpec,
        norm_position: str,
        where: str,
        fuse_activation: bool | str = "auto",
    ) -> None:
        super().__init__()
        kw = {"norm_position": norm_position, "spatial_dims": 2, "fuse": fuse_activation}
        self.pre = nn.Sequential(
            *norm_act(norm, in_channels, nn.ReLU, where=f"{where}.norm1", **kw)
        )
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.mid = nn.Sequential(
            *norm_act(norm, out_channels, nn.ReLU, where=f"{where}.norm2", **kw)
        )
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.pre(x)
        skip = x if self.shortcut is None else self.shortcut(out)
        return skip + self.conv2(self.mid(self.conv1(out)))


class ResNet(nn.Module):
    """Stem conv, one stage of ``blocks_per_stage`` pre-activation blocks per width (stages
    after the first halve the resolution), a final norm/activation, global pooling, linear.

    Args:
        input_shape: one sample's shape ``(C, H, W)``.
        num_classes: outputs of the classifier.
        norm: a registered name, a ``Norm`` class or a partial, called with each width.
        norm_position: ``"before_act"`` or ``"after_act"``.
        widths: the channels of each stage.
        blocks_per_stage: residual blocks per stage.
        fuse_activation: whether each norm applies its ReLU itself, as in ``ConvNet``:
            ``"auto"`` (default, where the norm's kernels fuse it), ``True`` or ``False``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        norm: NormSpec = "bn",
        norm_position: str = "before_act",
        widths: Sequence[int] = (32, 64),
        blocks_per_stage: int = 1,
        fuse_activation: bool | str = "auto",
    ) -> None:
        super().__init__()
        check_norm_position(norm_position)
        shape = check_input_shape("resnet", input_shape, 2)
        self.stem = nn.Conv2d(shape[0], widths[0], 3, padding=1)
        blocks: list[nn.Module] = []
        channels = widths[0]
        for s, width in enumerate(widths):
            for b in range(blocks_per_stage):
                stride = 2 if s > 0 and b == 0 else 1
                where, fuse = f"stage{s}.block{b}", fuse_activation
                blocks.append(
                    PreActBlock(channels, width, stride, norm, norm_position, where, fuse)
                )
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            *norm_act(
                norm,
                channels,
                nn.ReLU,
                norm_position,
                where="head.norm",
                spatial_dims=2,
                fuse=fuse_activation,
            ),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))
