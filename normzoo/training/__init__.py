"""The training side: the LightningModule, callbacks, pre-training checks and the app that
ties them together. Imports Lightning and Hydra; ``import normzoo`` does not load it."""

from normzoo.training.callbacks import FitTimer
from normzoo.training.module import Classifier

__all__ = ["Classifier", "FitTimer"]
