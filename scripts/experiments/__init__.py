"""The experiment drivers: one module per experiment, listed in ``experiments.registry``."""
