"""A plugin module that registers its norm itself, with an alias."""

import torch

import normzoo


@normzoo.register("selfregistered", aliases=("srn",))
class SelfRegistered(normzoo.Norm):
    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, affine=False)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x
