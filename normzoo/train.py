"""``normzoo-train`` (also ``python -m normzoo.train``): the Hydra app of the main job.

With no arguments it trains a small ConvNet with BatchNorm on scikit-learn's 8x8 digits on
the CPU. Swap anything from the command line::

    normzoo-train norm=gn norm.num_groups=8 model=resnet trainer.max_epochs=5
    normzoo-train experiment=mnist1d norm=ln
    normzoo-train -m norm=bn,gn,ln,in data.batch_size=2,4,8,16,32

The configs are the YAML files of ``conf/`` (installed as ``normzoo.conf``) plus one
``norm=<name>`` option per registered norm, plugins included. Each run writes its outputs,
``metrics.json`` among them, to its Hydra output folder.
"""

from __future__ import annotations

import importlib.util
import sys

#: The training extra's import names, and the extra that provides them.
TRAIN_MODULES = ("lightning", "hydra", "torchmetrics", "sklearn", "mnist1d")
INSTALL_HINT = "pip install 'normzoo[train]'"


def missing_modules() -> list[str]:
    """The training extra's modules that are not installed."""
    return [m for m in TRAIN_MODULES if importlib.util.find_spec(m) is None]


def main() -> None:
    """The console script: check the training extra, register the norm configs, run Hydra."""
    missing = missing_modules()
    if missing:
        sys.exit(
            f"normzoo-train needs the training extra, which is not fully installed "
            f"(missing: {', '.join(missing)}). Install it with: {INSTALL_HINT}"
        )
    import hydra
    from omegaconf import DictConfig

    from normzoo.training.app import format_summary, run
    from normzoo.training.configs import CONFIG_MODULE, register_configs

    register_configs()

    @hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name="train", version_base="1.3")
    def _app(cfg: DictConfig) -> float:
        metrics = run(cfg)
        import lightning.pytorch as pl

        if pl.utilities.rank_zero_only.rank == 0:
            print(format_summary(metrics))
        return metrics["test_acc"]

    _app()


if __name__ == "__main__":
    main()
