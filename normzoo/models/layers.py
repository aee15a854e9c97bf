"""Building blocks shared by the reference networks: a norm per layer, and its position.

A norm spec is anything ``normzoo.create`` takes: a registered name (``"gn"``), a ``Norm``
subclass, or a callable such as ``functools.partial(normzoo.norms.GroupNorm, num_groups=8)``
(what a Hydra ``norm`` config instantiates to). The spec is called once per layer with that
layer's channel count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

import normzoo
from normzoo.norms.base import Norm
from normzoo.registry import NormSpec

#: ``before_act``: conv -> norm -> activation (the BN paper); ``after_act``: conv ->
#: activation -> norm (the study notebook).
NORM_POSITIONS = ("before_act", "after_act")


def check_norm_position(norm_position: str) -> str:
    """Return ``norm_position`` if it is one of ``NORM_POSITIONS``, else raise a ``ValueError``."""
    if norm_position not in NORM_POSITIONS:
        raise ValueError(
            f"unknown norm_position {norm_position!r}; use 'before_act' (conv -> norm -> "
            f"activation, the BN paper) or 'after_act' (conv -> activation -> norm)"
        )
    return norm_position


def make_norm(norm: NormSpec, num_features: int, *, where: str, spatial_dims: int) -> nn.Module:
    """Build the norm of the layer ``where`` for ``num_features`` channels.

    Errors name the layer and its width, so a config mistake (say, GroupNorm groups that do
    not divide a width) points at the layer. A ``Norm`` that cannot take inputs with
    ``spatial_dims`` spatial dims (InstanceNorm after a linear layer) is refused here, at
    construction, rather than at the first forward pass.
    """
    try:
        layer = normzoo.create(norm, num_features)
    except (ValueError, TypeError, KeyError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        raise type(exc)(f"layer {where!r} (width {num_features}): {msg}") from exc
    if isinstance(layer, Norm) and not layer.channels_last:
        lo, hi = layer.min_spatial_dims, layer.max_spatial_dims
        if not lo <= spatial_dims <= hi:
            raise ValueError(
                f"layer {where!r} (width {num_features}): {type(layer).__name__} needs "
                f"{lo} to {hi} spatial dims, but this layer's features have {spatial_dims}; "
                f"choose another norm or a model with spatial features (e.g. a ConvNet)"
            )
    return layer


#: ``fuse_activation`` values of the models: ``"auto"`` (the default) fuses where a norm's
#: kernels fuse the ReLU, ``True`` wherever a normzoo norm can apply it, ``False`` never.
FUSE_OPTIONS = ("auto", True, False)


def check_fuse(fuse: bool | str) -> bool | str:
    """Return ``fuse`` if it is one of ``FUSE_OPTIONS``, else raise a ``ValueError``."""
    if fuse not in FUSE_OPTIONS or (fuse != "auto" and not isinstance(fuse, bool)):
        raise ValueError(
            f"fuse_activation must be 'auto' (fuse where the norm's kernels fuse the ReLU), "
            f"true or false, got {fuse!r}"
        )
    return fuse


def norm_act(
    norm: NormSpec,
    num_features: int,
    act: Callable[[], nn.Module],
    norm_position: str,
    *,
    where: str,
    spatial_dims: int,
    fuse: bool | str = False,
) -> list[nn.Module]:
    """The pair norm + activation in the order ``norm_position`` says.

    ``fuse``: the norm applies the ReLU itself (``Norm.fuse_activation``, one pass over the
    tensor less each way where its kernels fuse it) and an ``nn.Identity`` holds the ReLU's
    place, so module indices and state-dict keys are those of the unfused pair.
    ``True``: only a normzoo norm followed by ``nn.ReLU`` (``before_act``) fuses; anything
    else is a ``ValueError``. ``"auto"``: such a pair fuses where the norm's kernels fuse the
    ReLU (``Norm.fuses_activation``: BatchNorm, GroupNorm, InstanceNorm, LayerNorm,
    FrozenBatchNorm); every other pair stays a norm and an ``nn.ReLU``. ``False``: never.
    """
    layer = make_norm(norm, num_features, where=where, spatial_dims=spatial_dims)
    before = check_norm_position(norm_position) == "before_act"
    fusable = before and act is nn.ReLU and isinstance(layer, Norm)
    if check_fuse(fuse) == "auto":
        fuse = fusable and layer.fuses_activation
    if fuse:
        if not fusable:
            raise ValueError(
                f"layer {where!r}: fuse_activation needs a normzoo norm followed by nn.ReLU "
                f"(norm_position='before_act'), got {type(layer).__name__} with "
                f"{getattr(act, '__name__', act)} {norm_position}; use fuse_activation='auto' "
                f"to fuse only where it can"
            )
        return [layer.fuse_activation("relu"), nn.Identity()]
    if before:
        return [layer, act()]
    return [act(), layer]


def check_input_shape(model: str, input_shape: Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """``input_shape`` (without the batch dim) as a tuple, if it has ``spatial_dims`` + 1 dims."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != spatial_dims + 1:
        expected = ("(C,)", "(C, L)", "(C, H, W)", "(C, D, H, W)")[spatial_dims]
        raise ValueError(
            f"{model} expects inputs of shape {expected} per sample, but the data gives "
            f"{shape}; pick a model for this data (mlp takes any shape, convnet1d (C, L), "
            f"convnet2d and resnet (C, H, W))"
        )
    return shape
