import pytest

# Lightning and Hydra come with the `train` extra; without it these tests cannot run.
pytest.importorskip("lightning", reason="the training extra is not installed")
pytest.importorskip("hydra", reason="the training extra is not installed")
