"""A Lightning ``LayerSync`` plugin that synchronizes BatchNorms with normzoo's SyncBatchNorm.

Lightning's own ``TorchSyncBatchNorm`` uses ``torch.nn.SyncBatchNorm``, which refuses CPU
tensors, and reverts to a generic ``_BatchNormXd``. This plugin converts every plain BatchNorm
of the model (torch.nn's and normzoo's ``batchnorm``) to ``normzoo.norms.SyncBatchNorm`` when
the DDP strategy sets up fitting, so it runs over gloo on CPU as well as over NCCL, and at
teardown puts the *original* layers back (same classes and settings) with the synchronized
statistics and the trained affine parameters.

>>> trainer = lightning.pytorch.Trainer(strategy="ddp", devices=2, plugins=[NormzooSyncBatchNorm()])

The Hydra config selects it with ``trainer=ddp``; ``enabled=False`` turns it off.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.plugins.layer_sync import LayerSync
from torch.nn import Module

from normzoo.surgery import ConversionReport, convert, is_batchnorm, revert


class NormzooSyncBatchNorm(LayerSync):
    """Swap a model's BatchNorms for ``syncbatchnorm`` while DDP fits, and back at teardown.

    Args:
        enabled: ``False`` makes ``apply``/``revert`` return the model unchanged (so a config
            can keep the plugin listed and switch it off).
        process_group: the group to synchronize over; ``None``: the whole world.

    Attributes:
        report: the ``normzoo.ConversionReport`` of the last ``apply`` (``None`` when
            nothing is converted), which ``revert`` undoes.
    """

    def __init__(self, enabled: bool = True, process_group: Any = None) -> None:
        self.enabled = bool(enabled)
        self.process_group = process_group
        self.report: ConversionReport | None = None

    def apply(self, model: Module) -> Module:
        """Convert every plain BatchNorm of ``model`` to ``normzoo.norms.SyncBatchNorm``."""
        if not self.enabled:
            return model
        model, self.report = convert(
            model, "syncbatchnorm", only=is_batchnorm, process_group=self.process_group
        )
        return model

    def revert(self, model: Module) -> Module:
        """Put the original BatchNorms back, with the current (synchronized) state."""
        if self.report is None:
            return model
        model = revert(model, self.report)
        self.report = None
        return model
