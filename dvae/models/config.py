"""ModelConfig: everything needed to rebuild a model, saved in a run's config.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model (saved in config.json)."""

    model: str = "dmm"
    """Model family: a name in ``dvae.models.MODELS`` (dmm, vrnn, vrae, lgssm, vae, storn, srnn, rssm, rvae, dsae, kvae)."""
    x_dim: int = 1
    """Observation dimension."""
    u_dim: int = 0
    """Control dimension (0: uncontrolled)."""
    z_dim: int = 16
    """Latent dimension."""
    rnn_dim: int = 64
    """Hidden size of the inference (and, for VRNN/VRAE, generative) RNN."""
    rnn_type: str = "gru"
    """RNN cell: gru, lstm or rnn (ReLU)."""
    transition_dim: int = 64
    """Hidden size of the transition / prior network."""
    emission_dim: int = 64
    """Hidden size of the emitter."""
    likelihood: str = "gaussian"
    """Observation density: gaussian (continuous, learned diagonal scale), bernoulli (binary) or
    categorical (one-hot tokens over a vocabulary of x_dim, see ``observation_dist``)."""
    guide: str = "dks"
    """DMM guide: dks (backward RNN + combiner, q(z_t | z_{t-1}, x_{t:T})), mean_field (q(z_t | x_{t:T})),
    ltr (left to right, filtering: a forward RNN + combiner, q(z_t | z_{t-1}, x_{0:t}, u_{0:t-1})) or iaf
    (the DKS Gaussian of each step followed by ``num_iafs`` affine autoregressive flows). SRNN guide: dks
    (q(z_t | z_{t-1}, a_t), a backward RNN over [d_t, x_t]) or resq (the same, its mean a residual on the
    prior's mean)."""
    num_iafs: int = 0
    """DMM guide iaf: affine autoregressive transforms (Pyro's ``AffineAutoregressive``) on each step's
    posterior; 0 with guide iaf means 1. Must be 0 for the other guides."""
    iaf_dim: int = 50
    """DMM guide iaf: hidden size of each flow's autoregressive network (``AutoRegressiveNN``)."""
    frame_shape: Optional[List[int]] = None
    """DMM on images: [H, W] of each frame (x_t is the frame flattened, x_dim = H * W); the emitter is then a
    transposed-conv net (:class:`dvae.nn.ConvEmitter`) and the guide reads each frame through a conv net
    (:class:`dvae.nn.FrameEncoder`) before its RNN. None: MLPs on the vector x_t."""
    bidirectional: Optional[bool] = None
    """Bidirectional encoder RNN (VRAE and DMM only): the VRAE's q(z | x) reads the forward RNN's last state
    and the backward RNN's first; the DMM's combiner reads both RNN states at each step,
    q(z_t | z_{t-1}, x_{1:T}) (mean field: q(z_t | x_{1:T})). None: the family's default
    (``DynamicalVAE.default_bidirectional``: on for the DMM's dks, mean_field and iaf guides, off for its
    filtering guide ltr and for the VRAE), resolved when the model is built and recorded here."""
    c_dim: int = 0
    """Dimension of the per-sequence condition c of a conditional VRAE, DMM or DSAE (0: unconditional)."""
    missing: bool = False
    """Missing-data mode: the networks that read x (inference RNNs, the VRNN's phi_x) also read the
    observation mask, [x with missing entries 0, obs_mask], so they can tell a missing 0 from an observed 0."""
    emission_scale: str = "constant"
    """Gaussian observation scale: constant (one learned scale per dimension, the same at every step) or
    state (read from the emitter's input with the mean: from z_t for the DMM and the VAE, from
    (z_t, h_{t-1}) for the VRNN, from the decoder state for the VRAE). Ignored by the LGSSM (refused)."""
    vrae_decoder: str = "controls"
    """VRAE decoder: controls (s_t = RNN([u_{t-1}, c], s_{t-1}), z only in s_{-1}) or feedback (the seeds'
    form: s_t = RNN([x_{t-1}, z, u_{t-1}, c], s_{t-1}), teacher-forced in training, fed its own samples in
    generation and prediction). Other families ignore it."""
    rvae_causal: bool = True
    """RVAE: causal (x_t from an RNN over z_{0:t}; a forward state-space model) or non-causal (x_t from a
    bidirectional RNN over z_{0:T-1}; no step-by-step use). Other families ignore it."""
    kvae_components: int = 3
    """KVAE: K, the number of linear-Gaussian systems (A_k, B_k, C_k) its RNN mixes. Other families ignore it."""
    kvae_state_dim: int = 0
    """KVAE: the dimension of the linear-Gaussian state s_t under the codes a_t (z_dim); 0: 2 z_dim. Other
    families ignore it."""
    kl_balance: float = 0.0
    """RSSM: KL balancing weight alpha in [0, 1) (DreamerV2 uses 0.8): each step's KL is alpha KL(sg(q) || p)
    + (1 - alpha) KL(q || sg(p)), the same value with the gradient split; 0: off (the plain KL). Must be 0
    for the other families."""
    v_dim: int = 0
    """DSAE: dimension of the static code v of each sequence (0: the same as z_dim). Other families ignore it."""
    actions: Optional[str] = None
    """What the controls u were in the data: "discrete" (integer actions read one-hot, u_dim = the number of
    actions), "continuous" (real vectors), or None (no controls, or a run older than this field). A world
    model or a planner refuses an env whose action space is of the other kind."""
