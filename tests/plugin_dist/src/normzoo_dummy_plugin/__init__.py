"""A third-party norm plugin used by normzoo's tests: a Norm class named by an entry point."""

import torch

import normzoo


class DummyNorm(normzoo.Norm):
    """Scales the input by 2 (a plugin norm for tests)."""

    statistics_per = ()
    reduces_over = ()

    def __init__(self, num_features: int, scale: float = 2.0) -> None:
        super().__init__(num_features, affine=False)
        self.scale = scale

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale
