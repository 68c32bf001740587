"""Model families: each a Pyro model/guide pair with the interface of :class:`DynamicalVAE`."""

from dvae.models.base import DynamicalVAE, ModelConfig, observation_dist, repeat_batch
from dvae.models.dmm import DMM
from dvae.models.lgssm import LGSSM
from dvae.models.vae import VAE
from dvae.models.vrae import VRAE
from dvae.models.vrnn import VRNN

MODELS = {"dmm": DMM, "vrnn": VRNN, "vrae": VRAE, "lgssm": LGSSM, "vae": VAE}


def build_model(config: ModelConfig) -> DynamicalVAE:
    """The model family named by ``config.model``."""
    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r} (choose {', '.join(MODELS)})")
    if (config.bidirectional or config.c_dim) and config.model not in ("dmm", "vrae"):
        raise ValueError(f"bidirectional encoders and conditioning (c_dim) are for dmm and vrae, not {config.model!r}")
    return MODELS[config.model](config)


__all__ = ["DynamicalVAE", "ModelConfig", "DMM", "VRNN", "VRAE", "LGSSM", "VAE", "MODELS", "build_model",
           "observation_dist", "repeat_batch"]
