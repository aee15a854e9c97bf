"""Models given as a whole: any network, with its norm layers swapped by ``normzoo.convert``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from normzoo.registry import NormSpec
from normzoo.surgery import convert


def converted(
    model: nn.Module | Callable[..., nn.Module],
    norm: NormSpec,
    *,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    **model_kwargs: Any,
) -> nn.Module:
    """``model`` with every normalization layer replaced by ``norm`` (``normzoo.convert``).

    This is how a config swaps the norm of a network that does not take a ``norm`` argument,
    such as one built from torch.nn's own ``BatchNorm2d`` or loaded from elsewhere.

    Args:
        model: a built ``nn.Module``, or a factory (e.g. a Hydra partial) called with
            ``input_shape``, ``num_classes`` and ``model_kwargs``.
        norm: what ``normzoo.convert`` takes: a registered name, a ``Norm`` class or a
            partial called with each layer's channel count.
        input_shape, num_classes: passed to a factory (the training app gives them).
        **model_kwargs: more arguments for the factory (e.g. ``norm_position``).
    """
    if not isinstance(model, nn.Module):
        model = model(input_shape=input_shape, num_classes=num_classes, **model_kwargs)
    elif model_kwargs:
        raise TypeError(
            f"converted() got arguments for a model that is already built: "
            f"{', '.join(sorted(model_kwargs))}; pass a factory (a partial) instead"
        )
    model, _ = convert(model, norm)
    return model
