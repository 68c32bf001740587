"""dvae: dynamical variational autoencoders (latent state-space models) as Pyro programs.

From Python: ``dvae.fit(data, actions, model="dmm", **options)`` -> :class:`Run`, ``dvae.load(run_dir)``;
see docs/python-api.md. The API's names are imported when first used, so ``import dvae`` stays fast.
"""

from dvae.data.batch import SequenceBatch
from dvae.infer.elbo import elbo

__version__ = "0.1.0"
__all__ = ["fit", "load", "Run", "Forecast", "SequenceBatch", "elbo", "__version__"]

_API = ("fit", "load", "Run", "Forecast")


def __getattr__(name):
    if name in _API:
        from dvae import api

        return getattr(api, name)
    raise AttributeError(f"module 'dvae' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
