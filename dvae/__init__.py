"""dvae: dynamical variational autoencoders (latent state-space models) as Pyro programs."""

from dvae.data.batch import SequenceBatch
from dvae.infer.elbo import elbo

__version__ = "0.1.0"
__all__ = ["SequenceBatch", "elbo", "__version__"]
