"""Arguments some norms need in tests that build every registered norm generically."""

import normzoo

#: Ghost BN's default virtual batch of 32 is larger than the tests' batches of 4, which is an
#: error by design; these arguments let each norm run on small batches.
SMALL_BATCH_KWARGS = {"ghostbatchnorm": {"virtual_batch_size": 2}}


def small_batch_kwargs(name: str) -> dict:
    """The keyword arguments ``name`` needs for the tests' small batches."""
    return dict(SMALL_BATCH_KWARGS.get(normzoo.info(name).name, {}))
