"""Diagnostics of the latent code: KL per latent dimension, active units, posterior collapse.

- KL per dimension: the closed-form KL(q || p) of each latent site split by latent dimension, summed
  over sequences and steps and divided by the number of observed steps (so that the entries sum to
  the ``kl_per_step`` of :func:`dvae.infer.evaluation.evaluate`). A dimension with a KL near zero carries
  no information about the data.
- Active units (Burda et al. 2016, "Importance weighted autoencoders", section 5.2): dimension d is
  active when its posterior mean varies across the data, Var_x(E_q[z_d | x]) > 0.01. For the VRAE the
  data points are sequences and E_q[z | x] is the encoder's mean; for per-step latents (DMM, VRNN) they
  are the observed (sequence, step) pairs and E_q[z_t | x] is the mean of q(z_t | z_{t-1}, .) at the
  path the guide drew (exact for the mean-field guide, a one-draw estimate for the others). The
  variance is the population variance over the evaluated data.
- A flow guide (the DMM's ``iaf``): its steps have no KL per dimension (the per-dimension KL entries are
  NaN; the KL per step of ``evaluate`` is the one-draw estimate), and the point standing for E_q[z_t | .]
  is the flow's image of the base Gaussian's mean, f(loc_t), not the mean itself.
- Posterior collapse: :class:`CollapseMonitor` counts consecutive epochs whose KL per step is below a
  threshold and flags a collapse after several; the trainer then warns once with
  :class:`PosteriorCollapseWarning`.

Every statistic works on either form of a program (per-step sites ``z_t`` or one path site ``z``). A
model with several latents (the DSAE's per-sequence code ``v`` and its ``z``) lists the dimensions of
each, in site order, and counts the active units of each over its own data points.
"""

from __future__ import annotations

import re
import warnings
from typing import Callable, Dict, List, NamedTuple, Optional

import numpy as np
import torch
from pyro import poutine
from pyro.distributions import MaskedDistribution
from pyro.poutine.util import site_is_subsample
from torch.distributions import Normal
from torch.distributions.kl import _kl_normal_normal

from dvae.data.batching import batches
from dvae.infer.elbo import site_mask, with_batch_mask
from dvae.models.paths import FlowPath, FlowStep, as_path, steps_kl

ACTIVE_THRESHOLD = 0.01


class PosteriorCollapseWarning(UserWarning):
    """The KL per step stayed near zero for several epochs: the latent code is ignored."""


class LatentColumns(NamedTuple):
    """One latent site split by dimension: ``kl`` (B, S, d) closed-form KL of each dimension (zero on
    padded entries), ``loc`` (B, S, d) the guide's mean, ``real`` (B, S) bool. S is T for a path site,
    1 for a per-step site or the VRAE's single z."""

    kl: torch.Tensor
    loc: torch.Tensor
    real: torch.Tensor


def _normal_inside(fn) -> Normal:
    """The diagonal Normal inside a per-step site's distribution (Masked / Independent / Expanded)."""
    while not isinstance(fn, Normal):
        if not hasattr(fn, "base_dist"):
            raise TypeError(f"latent diagnostics need diagonal Gaussian sites, got {type(fn).__name__}")
        fn = fn.base_dist
    return fn


def site_columns(guide_site, model_site) -> LatentColumns:
    """The KL of one latent site per dimension and the guide's mean, as columns."""
    q, q_mask = as_path(guide_site["fn"])
    p, p_mask = as_path(model_site["fn"])
    if q is not None and p is not None:
        extra = torch.ones(q.batch_shape, dtype=torch.bool, device=q.loc.device)  # (B,)
        for m in (q_mask, p_mask, guide_site["mask"]):
            extra = with_batch_mask(extra, m)
        real = extra[..., None] if q.mask is None else q.mask & extra[..., None]  # (B, T)
        if isinstance(q, FlowPath):  # no KL per dimension; the flow's image of the base mean as the centre
            kl = torch.full_like(q.loc, float("nan"))
            return LatentColumns(torch.where(real[..., None], kl, kl.new_zeros(())), q.center(),
                                 real.expand(kl.shape[:-1]))
        kl = steps_kl(q, p, per_dim=True)  # (B, T, d), zero on padded steps
        kl = torch.where(real[..., None], kl, kl.new_zeros(()))
        return LatentColumns(kl, q.params()[0], real.expand(kl.shape[:-1]))
    q_inner = guide_site["fn"]
    while isinstance(q_inner, MaskedDistribution):
        q_inner = q_inner.base_dist
    if isinstance(q_inner, FlowStep):  # a flow guide's step: as for a FlowPath
        real = site_mask(guide_site, q_inner.log_det)  # (B,)
        center = FlowPath(q_inner.loc[:, None], q_inner.scale[:, None], q_inner.base[:, None], q_inner.value[:, None],
                          q_inner.log_det[:, None], None, q_inner.transforms).center()  # (B, 1, d)
        kl = torch.full_like(center, float("nan"))
        return LatentColumns(torch.where(real[:, None, None], kl, kl.new_zeros(())), center, real[:, None])
    qn, pn = _normal_inside(guide_site["fn"]), _normal_inside(model_site["fn"])
    loc_q, scale_q = torch.broadcast_tensors(qn.loc, qn.scale)
    loc_p, scale_p = torch.broadcast_tensors(pn.loc, pn.scale)
    kl = _kl_normal_normal(Normal(loc_q, scale_q, validate_args=False),
                           Normal(loc_p, scale_p, validate_args=False))  # (B, d)
    real = site_mask(guide_site, kl[..., 0])  # (B,)
    if isinstance(model_site["fn"], MaskedDistribution) and torch.is_tensor(model_site["fn"]._mask):
        real = real & model_site["fn"]._mask
    kl = torch.where(real[..., None], kl, kl.new_zeros(()))
    return LatentColumns(kl[:, None], loc_q[:, None], real[:, None])


@torch.no_grad()
def latent_columns(model: Callable, guide: Callable, batch, names: bool = False) -> List[LatentColumns]:
    """Run the guide, replay the model, and split every latent site by dimension (in site order);
    ``names``: (site name, columns) pairs."""
    guide_trace = poutine.trace(guide).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
    out = []
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site):
            col = site_columns(guide_trace.nodes[name], site)
            out.append((name, col) if names else col)
    return out


def active_units(means: np.ndarray, threshold: float = ACTIVE_THRESHOLD):
    """(number of active dimensions, the variance of each dimension): ``means`` (N, z_dim) are the
    posterior means of N data points; a dimension is active when its variance exceeds ``threshold``."""
    means = np.asarray(means, dtype=np.float64)
    assert means.ndim == 2, means.shape
    variance = means.var(0) if len(means) else np.zeros(means.shape[1])  # (z_dim,)
    return int((variance > threshold).sum()), variance


@torch.no_grad()
def latent_report(model, xs, us, cs=None, batch_size: int = 64, vectorized: bool = True,
                  threshold: float = ACTIVE_THRESHOLD) -> Optional[Dict]:
    """KL per latent dimension (nats per observed step, a list summing to the KL per step), the number
    of active units and each dimension's posterior-mean variance, over a set of sequences (data as the
    model sees it: normalised). None for a model without latent sites (the exact LGSSM)."""
    was_training = model.training
    model.eval()
    program = model.programs(vectorized=vectorized)
    kl_sums, means, num_steps = {}, {}, 0  # by latent: the per-step sites z_0 .. z_{T-1} are one latent, z
    for batch in batches(xs, us, batch_size, by_length=True, cs=cs):
        num_steps += int(batch.lengths.sum())
        for name, col in latent_columns(*program, batch.to(model.device), names=True):
            latent = re.sub(r"_\d+$", "", name)
            kl = col.kl.reshape(-1, col.kl.shape[-1]).sum(0)  # (d,)
            kl_sums[latent] = kl if latent not in kl_sums else kl_sums[latent] + kl
            means.setdefault(latent, []).append(col.loc[col.real].cpu())  # (n, d): the real entries
    model.train(was_training)
    if not kl_sums:
        return None
    # several latents (the DSAE's code v and its z): their dimensions one after another, in site order
    units = [active_units(torch.cat(means[k]).numpy(), threshold) for k in kl_sums]
    return {"kl_per_dim": (torch.cat(list(kl_sums.values())) / num_steps).tolist(),
            "active_units": sum(u[0] for u in units),
            "posterior_mean_var": [v for u in units for v in u[1].tolist()]}


class CollapseMonitor:
    """Flags posterior collapse: the KL per step below ``threshold`` nats for ``epochs`` consecutive
    epochs. ``update(kl_per_step)`` returns whether the run counts as collapsed after this epoch;
    ``count`` (consecutive low epochs so far) is what a resumed run must restore."""

    def __init__(self, threshold: float = 0.01, epochs: int = 3, count: int = 0):
        assert threshold >= 0 and epochs >= 1, (threshold, epochs)
        self.threshold, self.epochs, self.count = threshold, epochs, count

    def update(self, kl_per_step: float) -> bool:
        self.count = self.count + 1 if kl_per_step < self.threshold else 0
        return self.count >= self.epochs


def epoch_diagnostics(model, valid, kl_per_step: float, config, state: dict, device=None) -> dict:
    """An epoch's latent diagnostics for its metrics row: the KL per latent dimension, the active units
    and each dimension's posterior-mean variance on the validation split ``valid`` (xs, us, cs), and
    the collapse check of :class:`CollapseMonitor` (``config``: ``collapse_kl``, ``collapse_epochs``,
    ``eval_batch_size``, ``vectorized``), its count kept in the trainer's ``state`` (``collapse_count``,
    ``collapse_warned``: a resumed run goes on counting). Warns once per run with
    :class:`PosteriorCollapseWarning`. Its draws leave the caller's random stream as it was (``device``,
    default the model's: the CUDA stream forked too). {} for a model without latent sites (the LGSSM)."""
    device = torch.device(device or model.device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # its draws leave the training's random stream as it was
        report = latent_report(model, *valid, config.eval_batch_size, vectorized=config.vectorized)
    if report is None:
        return {}
    monitor = CollapseMonitor(config.collapse_kl, config.collapse_epochs, state.get("collapse_count", 0))
    collapsed = monitor.update(kl_per_step)
    state["collapse_count"] = monitor.count
    if collapsed and not state.get("collapse_warned", False):
        state["collapse_warned"] = True
        warnings.warn(PosteriorCollapseWarning(
            f"posterior collapse: the validation KL per step has stayed below {config.collapse_kl} nats for "
            f"{monitor.count} epochs ({kl_per_step:.3g} now; {report['active_units']} active units); the latent "
            "code is ignored (try free bits, KL annealing, beta < 1 or a weaker decoder)"), stacklevel=3)
    return {"valid_kl_per_dim": report["kl_per_dim"], "active_units": report["active_units"],
            "posterior_mean_var": report["posterior_mean_var"], "posterior_collapse": collapsed}
