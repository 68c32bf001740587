"""Model families: each a Pyro model/guide pair with the interface of :class:`DynamicalVAE`."""

from dvae.models.base import DynamicalVAE, ModelConfig, observation_dist, repeat_batch
from dvae.models.dmm import DMM
from dvae.models.lgssm import LGSSM
from dvae.models.rssm import RSSM
from dvae.models.srnn import SRNN
from dvae.models.storn import STORN
from dvae.models.vae import VAE
from dvae.models.vrae import VRAE
from dvae.models.vrnn import VRNN

MODELS = {"dmm": DMM, "vrnn": VRNN, "vrae": VRAE, "lgssm": LGSSM, "vae": VAE, "storn": STORN, "srnn": SRNN,
          "rssm": RSSM}
# --- families of issue 17, part 2 (RVAE, DSAE) ---
from dvae.models.dsae import DSAE  # noqa: E402
from dvae.models.rvae import RVAE  # noqa: E402

MODELS.update(rvae=RVAE)
MODELS.update(dsae=DSAE)
from dvae.models.kvae import KVAE  # noqa: E402

MODELS.update(kvae=KVAE)
# --- end of part 2 ---
"""The families by name (``ModelConfig.model``); each class states its capabilities."""


def all_guides():
    """Every guide name any family takes (what ``--guide`` accepts; a family checks its own)."""
    return tuple(dict.fromkeys(g for cls in MODELS.values() for g in cls.guides))


def capability_problems(config: ModelConfig):
    """(field, value, what it must be) for each setting the family named by ``config.model`` does not take."""
    cls = MODELS.get(config.model)
    if cls is None:
        return [("model", config.model, f"one of {', '.join(MODELS)}")]
    takes = lambda flag: ", ".join(n for n, c in MODELS.items() if getattr(c, flag))  # noqa: E731
    out = []
    if cls.guides and config.guide not in cls.guides:
        out.append(("guide", config.guide, f"one of {', '.join(cls.guides)} for {config.model}"))
    if config.c_dim and not cls.conditional:
        out.append(("c_dim", config.c_dim, f"0 for models other than {takes('conditional')}"))
    if config.kl_balance and not cls.kl_balancing:
        out.append(("kl_balance", config.kl_balance, f"0 for models other than {takes('kl_balancing')}"))
    if config.bidirectional and not cls.bidirectional_encoder:
        out.append(("bidirectional", config.bidirectional, f"false for models other than {takes('bidirectional_encoder')}"))
    if config.vrae_decoder not in ("controls", "feedback"):
        out.append(("vrae_decoder", config.vrae_decoder, "controls or feedback"))
    if config.emission_scale not in ("constant", "state"):
        out.append(("emission_scale", config.emission_scale, "constant or state"))
    elif config.emission_scale == "state" and not cls.state_scale:
        out.append(("emission_scale", config.emission_scale, f"constant for {config.model}"))
    return out


def build_model(config: ModelConfig) -> DynamicalVAE:
    """The model family named by ``config.model``."""
    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r} (choose {', '.join(MODELS)})")
    cls = MODELS[config.model]
    if cls.guides and config.guide not in cls.guides:
        raise ValueError(f"unknown {config.model.upper()} guide {config.guide!r} (choose {', '.join(cls.guides)})")
    if (config.bidirectional and not cls.bidirectional_encoder) or (config.c_dim and not cls.conditional):
        both = [n for n, c in MODELS.items() if c.bidirectional_encoder and c.conditional]
        raise ValueError(f"bidirectional encoders and conditioning (c_dim) are for {' and '.join(both)}, "
                         f"not {config.model!r}")
    if config.kl_balance and not cls.kl_balancing:
        takers = [n for n, c in MODELS.items() if c.kl_balancing]
        raise ValueError(f"kl_balance (KL balancing) is for {' and '.join(takers)}, not {config.model!r}")
    scale = [p for p in capability_problems(config) if p[0] == "emission_scale"]
    if scale:
        raise ValueError(f"emission_scale {scale[0][1]!r}: it must be {scale[0][2]}")
    return cls(config)


__all__ = ["DynamicalVAE", "ModelConfig", "DMM", "VRNN", "VRAE", "LGSSM", "VAE", "STORN", "SRNN", "RSSM", "RVAE",
           "DSAE", "KVAE", "MODELS", "build_model",
           "all_guides", "capability_problems",
           "observation_dist", "repeat_batch"]
