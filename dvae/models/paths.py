"""Whole latent paths as one Pyro site: the distributions of the time-vectorized programs.

The per-step programs sample ``z_0 .. z_{T-1}`` as T sites. The vectorized programs
(``model_vectorized`` / ``guide_vectorized`` of every model) sample the path as ONE site ``"z"`` with
batch shape (B,) and event shape (T, z_dim), and observe ``"x"`` as one site with event shape
(T, x_dim). Two distributions carry the per-step diagonal Gaussians of a path:

- :class:`GuidePath` (guide side): the loc and scale (B, T, z_dim) of q(z_t | z_{t-1}, .) computed
  while the guide drew the path step by step, and the drawn path itself; ``rsample()`` returns that
  path, so the guide's loop is the only sequential part.
- :class:`PriorPath` (model side): p(z_t | z_{t-1}, .) whose loc and scale at EVERY step are computed
  at once from a given path by ``params(path)`` (for the DMM: the transition applied to
  ``z[:, :-1]`` in one batched call, the initial state at t = 0). Sampled step by step by ``step``
  when the program runs unconditioned (generation); scored in one call otherwise.

:func:`steps_kl` gives the per-step closed-form KL(q_t || p_t) given the path, (B, T), zero on padded
steps; it is registered with ``torch.distributions.kl_divergence`` for (GuidePath, PriorPath) and
(GuidePath, GuidePath), summed over steps. That sum is the chain rule of the KL taken at the drawn
path: an unbiased one-draw estimate of KL(q(z) || p(z)) whose only randomness is the path z_{<t} fed to
each step, exactly the estimator ``TraceMeanField_ELBO`` forms from T per-step sites.

:class:`FlowPath` (guide side, the DMM's ``iaf`` guide) holds a path drawn through a normalizing flow
at each step (:class:`FlowStep` is one such step, for the per-step program): its steps have no
closed-form KL, so :func:`sampled_steps_kl` gives the one-draw estimate log q(z_t) - log p(z_t) of each
step, what ``TraceMeanField_ELBO`` falls back to on a per-step site without a registered KL.

All three distributions implement ``expand``: ``pyro.plate`` calls ``expand`` on every site's distribution,
and the default wraps a custom distribution in an ``ExpandedDistribution``, which hides its type from
the KL registry, so the ELBO would silently fall back to a sampled KL (``tests/infer/test_vectorized.py``
checks that it does not).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from pyro.distributions import MaskedDistribution, TorchDistribution
from pyro.distributions import Normal as PyroNormal
from torch.distributions import Independent, Normal, constraints
from torch.distributions.kl import _kl_normal_normal, register_kl

Params = Tuple[torch.Tensor, torch.Tensor]


def _normal_log_prob(value, loc, scale):
    """log N(value; loc, scale), elementwise (torch's Normal.log_prob, without argument validation)."""
    return Normal(loc, scale, validate_args=False).log_prob(value)


def _masked_steps(per_step: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Zero the padded steps of a (..., T) tensor."""
    return per_step if mask is None else torch.where(mask, per_step, per_step.new_zeros(()))


class _PathBase(TorchDistribution):
    """A distribution over a path (B, T, d) of per-step diagonal Gaussians, with a (B, T) step mask."""

    arg_constraints = {}
    support = constraints.independent(constraints.real, 2)

    def __init__(self, batch_shape, event_shape, mask: Optional[torch.Tensor]):
        self.mask = mask  # (B, T) bool: true on real steps, or None
        super().__init__(torch.Size(batch_shape), torch.Size(event_shape), validate_args=False)

    def params(self, value: torch.Tensor) -> Params:
        """loc, scale (B, T, d) of every step's Gaussian at the path ``value``."""
        raise NotImplementedError

    def step_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log density of each step (B, T), zero on padded steps."""
        loc, scale = self.params(value)
        return _masked_steps(_normal_log_prob(value, loc, scale).sum(-1), self.mask)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.step_log_prob(value).sum(-1)  # (B,)


class GuidePath(_PathBase):
    """q(z) = prod_t N(z_t; loc_t, scale_t), with loc_t, scale_t computed from z_{t-1} while the guide
    drew ``path``. Holds that draw: ``rsample()`` returns it, and ``log_prob`` is valid at it.

    ``loc``, ``scale``, ``path``: (B, T, d); ``mask``: (B, T) bool or None.
    """

    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, path: torch.Tensor, mask: Optional[torch.Tensor] = None):
        assert loc.shape == scale.shape == path.shape and loc.dim() >= 2, (loc.shape, scale.shape, path.shape)
        self.loc, self.scale, self.path = loc, scale, path
        super().__init__(loc.shape[:-2], loc.shape[-2:], mask)

    def params(self, value=None) -> Params:
        return self.loc, self.scale

    def rsample(self, sample_shape=torch.Size()):
        if len(sample_shape):
            raise NotImplementedError("GuidePath holds one drawn path; it cannot draw more")
        return self.path

    def sample(self, sample_shape=torch.Size()):
        return self.rsample(sample_shape).detach()

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        shape = batch_shape + self.event_shape
        mask = None if self.mask is None else self.mask.expand(batch_shape + self.event_shape[:1])
        return GuidePath(self.loc.expand(shape), self.scale.expand(shape), self.path.expand(shape), mask)


class PriorPath(_PathBase):
    """p(z) = prod_t N(z_t; loc_t(z_{<t}), scale_t(z_{<t})), scored for every step at once.

    ``params(path)`` -> loc, scale (B, T, d): every step's parameters from the path, in one batched
    call (cached for the last path it saw, so the program and the ELBO share one evaluation).
    ``step(t, z_prev)`` -> loc, scale (B, d): step t's parameters, for sampling step by step (None:
    the path cannot be sampled, only scored). ``shape``: (B, T, d). ``kl_balance`` alpha: the KL of a
    guide's path against it is balanced (:func:`balanced_normal_kl`); None: plain.
    """

    has_rsample = True

    def __init__(self, params: Callable[[torch.Tensor], Params], shape, mask: Optional[torch.Tensor] = None,
                 step: Optional[Callable[[int, Optional[torch.Tensor]], Params]] = None,
                 kl_balance: Optional[float] = None):
        shape = torch.Size(shape)
        self._params, self._step = params, step
        self.kl_balance = kl_balance  # KL balancing of a guide's path against this prior (None: plain KL)
        self._cache = (None, None)
        super().__init__(shape[:-2], shape[-2:], mask)

    def params(self, value: torch.Tensor) -> Params:
        if self._cache[0] is not value:
            self._cache = (value, self._params(value))
        return self._cache[1]

    def rsample(self, sample_shape=torch.Size()):
        if len(sample_shape):
            raise NotImplementedError("PriorPath draws one path per batch entry")
        if self._step is None:
            raise NotImplementedError("this path can be scored but not sampled (use the per-step program)")
        z, zs = None, []
        for t in range(self.event_shape[0]):
            loc, scale = self._step(t, z)
            z = loc + torch.empty_like(loc).normal_() * scale  # (B, d), as Normal.rsample
            zs.append(z)
        return torch.stack(zs, -2)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.rsample(sample_shape)

    def expand(self, batch_shape, _instance=None):
        if torch.Size(batch_shape) == self.batch_shape:
            return self
        raise NotImplementedError("PriorPath cannot change its batch shape")


def balanced_normal_kl(q: Normal, p: Normal, alpha: float) -> torch.Tensor:
    """KL balancing (Hafner et al. 2021, DreamerV2): alpha KL(sg(q) || p) + (1 - alpha) KL(q || sg(p)),
    elementwise. Its value is KL(q || p); its gradient moves the prior toward the posterior with weight
    alpha and the posterior toward the prior with weight 1 - alpha (sg: stop-gradient)."""
    sg_q = Normal(q.loc.detach(), q.scale.detach(), validate_args=False)
    sg_p = Normal(p.loc.detach(), p.scale.detach(), validate_args=False)
    return alpha * _kl_normal_normal(sg_q, p) + (1 - alpha) * _kl_normal_normal(q, sg_p)


class BalancedNormal(PyroNormal):
    """A Normal prior whose KL from a Normal posterior is balanced with weight ``kl_balance`` (alpha) on
    the prior's side (:func:`balanced_normal_kl`): the per-step sites of a family with KL balancing."""

    def __init__(self, loc, scale, kl_balance: float, validate_args=None):
        super().__init__(loc, scale, validate_args=validate_args)
        self.kl_balance = kl_balance

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(BalancedNormal, _instance)
        new = super().expand(batch_shape, _instance=new)
        new.kl_balance = self.kl_balance
        return new


@register_kl(Normal, BalancedNormal)
def _kl_normal_balanced(q, p):
    return balanced_normal_kl(q, p, p.kl_balance)


def apply_flow(transforms, x: torch.Tensor):
    """Push base draws ``x`` (B, d) through ``transforms`` (each with event_dim 1, e.g. Pyro's
    ``AffineAutoregressive``): (y (B, d), the summed log |det dy/dx| (B,))."""
    y, log_det = x, x.new_zeros(x.shape[:-1])
    for t in transforms:
        y_next = t(y)
        log_det = log_det + t.log_abs_det_jacobian(y, y_next)  # (B,): right after the call, from its cache
        y = y_next
    return y, log_det


class FlowStep(TorchDistribution):
    """One step of a normalizing-flow guide: z_t = f(x) with x ~ N(loc, scale) (diagonal, (B, d)) and
    f the composition of ``transforms``, so log q(z_t) = log N(x; loc, scale) - log |det df/dx|.

    Holds its draw, as :class:`GuidePath` does: ``base`` x (B, d), ``value`` z_t = f(x) and ``log_det``
    (B,); ``rsample()`` returns ``value`` and ``log_prob`` at it needs no inverse of f. At any other
    value, ``log_prob`` inverts the flow (``TransformedDistribution``). batch (B,), event (d,).
    """

    arg_constraints = {}
    support = constraints.independent(constraints.real, 1)
    has_rsample = True

    def __init__(self, loc, scale, base, value, log_det, transforms):
        assert loc.shape == scale.shape == base.shape == value.shape and log_det.shape == loc.shape[:-1], \
            (loc.shape, scale.shape, base.shape, value.shape, log_det.shape)
        self.loc, self.scale, self.base, self.value, self.log_det = loc, scale, base, value, log_det
        self.transforms = list(transforms)
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    @classmethod
    def draw(cls, loc, scale, transforms) -> "FlowStep":
        """Draw x ~ N(loc, scale) (the normals Normal.rsample draws) and push it through the flow."""
        base = loc + torch.empty_like(loc).normal_() * scale  # (B, d)
        value, log_det = apply_flow(transforms, base)
        return cls(loc, scale, base, value, log_det, transforms)

    def rsample(self, sample_shape=torch.Size()):
        if len(sample_shape):
            raise NotImplementedError("FlowStep holds one draw; it cannot draw more")
        return self.value

    def sample(self, sample_shape=torch.Size()):
        return self.rsample(sample_shape).detach()

    def log_prob(self, value):
        if value is self.value:
            return _normal_log_prob(self.base, self.loc, self.scale).sum(-1) - self.log_det  # (B,)
        from pyro.distributions import TransformedDistribution

        base = Independent(Normal(self.loc, self.scale, validate_args=False), 1)
        return TransformedDistribution(base, self.transforms).log_prob(value)

    def expand(self, batch_shape, _instance=None):
        if torch.Size(batch_shape) == self.batch_shape:
            return self
        raise NotImplementedError("FlowStep cannot change its batch shape")


class FlowPath(_PathBase):
    """q(z) = prod_t q(z_t | z_{t-1}, .) for a flow guide: each step's z_t = f(x_t) with x_t ~ N(loc_t,
    scale_t), drawn step by step by the guide (see :class:`FlowStep`). Holds the draw: ``loc``,
    ``scale``, ``base`` (the x_t), ``path`` (the z_t), all (B, T, d), and ``log_det`` (B, T).
    ``log_prob`` is valid at ``path`` only. Its KL against a :class:`PriorPath` has no closed form:
    ``dvae.infer.elbo.site_kl_steps`` takes the one-draw estimate log q(z_t) - log p(z_t) of each step.
    """

    has_rsample = True

    def __init__(self, loc, scale, base, path, log_det, mask: Optional[torch.Tensor] = None, transforms=()):
        assert loc.shape == scale.shape == base.shape == path.shape and log_det.shape == loc.shape[:-1], \
            (loc.shape, scale.shape, base.shape, path.shape, log_det.shape)
        self.loc, self.scale, self.base, self.path, self.log_det = loc, scale, base, path, log_det
        self.transforms = list(transforms)
        super().__init__(loc.shape[:-2], loc.shape[-2:], mask)

    def params(self, value=None) -> Params:
        raise TypeError("a flow path's steps are not Gaussian: it has no loc and scale")

    def step_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value is not self.path:
            raise NotImplementedError("FlowPath scores only the path it drew (use the per-step program)")
        lp = _normal_log_prob(self.base, self.loc, self.scale).sum(-1) - self.log_det  # (B, T)
        return _masked_steps(lp, self.mask)

    def rsample(self, sample_shape=torch.Size()):
        if len(sample_shape):
            raise NotImplementedError("FlowPath holds one drawn path; it cannot draw more")
        return self.path

    def sample(self, sample_shape=torch.Size()):
        return self.rsample(sample_shape).detach()

    def center(self) -> torch.Tensor:
        """The flow's image of each step's base mean, f(loc_t) (B, T, d): a point of q(z_t | z_{t-1}, .) at
        the drawn path (not its mean, which has no closed form), for the latent diagnostics."""
        with torch.no_grad():
            B, T, d = self.loc.shape
            return apply_flow(self.transforms, self.loc.reshape(B * T, d))[0].reshape(B, T, d)

    def expand(self, batch_shape, _instance=None):
        if torch.Size(batch_shape) == self.batch_shape:
            return self
        raise NotImplementedError("FlowPath cannot change its batch shape")


def _unmask(fn):
    """Strip MaskedDistribution wrappers: (the inner distribution, the combined batch mask or None)."""
    mask, off = None, None
    while isinstance(fn, MaskedDistribution):
        m = fn._mask
        if m is False:  # everything masked out: built below, on the distribution's device
            off = fn.batch_shape if off is None else off
        elif torch.is_tensor(m):
            mask = m if mask is None else mask & m
        fn = fn.base_dist
    if off is not None:
        device = mask.device if mask is not None else _device(fn)
        m = torch.zeros(off, dtype=torch.bool, device=device)
        mask = m if mask is None else mask & m
    return fn, mask


def _device(fn) -> torch.device:
    """The device of a distribution's tensors, looked for down its ``base_dist`` chain (the CPU where it
    holds none)."""
    while fn is not None:
        for v in vars(fn).values():
            if torch.is_tensor(v):
                return v.device
        fn = getattr(fn, "base_dist", None)
    return torch.device("cpu")


def as_path(fn) -> Tuple[Optional[_PathBase], Optional[torch.Tensor]]:
    """(the path distribution inside ``fn``, an extra (B,) batch mask), or (None, None) when ``fn`` is
    not a path distribution (an ExpandedDistribution around one is NOT recognised, on purpose)."""
    inner, mask = _unmask(fn)
    return (inner, mask) if isinstance(inner, _PathBase) else (None, None)


def steps_kl(q: _PathBase, p: _PathBase, per_dim: bool = False) -> torch.Tensor:
    """Per-step closed-form KL(q(z_t | z_{<t}) || p(z_t | z_{<t})) at q's drawn path: (B, T), zero on
    the steps padded in either q or p. ``per_dim``: the KL of each latent dimension, (B, T, d)."""
    if not isinstance(q, GuidePath):
        raise TypeError(f"the closed-form KL of a path needs the guide's drawn Gaussian path (a GuidePath), "
                        f"not {type(q).__name__}")
    mq, sq = q.params()
    mp, sp = p.params(q.path)
    q_n, p_n = Normal(mq, sq, validate_args=False), Normal(mp, sp, validate_args=False)
    alpha = getattr(p, "kl_balance", None)
    kl = _kl_normal_normal(q_n, p_n) if alpha is None else balanced_normal_kl(q_n, p_n, alpha)  # (B, T, d)
    mask = q.mask if p.mask is None or p.mask is q.mask else (p.mask if q.mask is None else q.mask & p.mask)
    if per_dim:
        return kl if mask is None else torch.where(mask[..., None], kl, kl.new_zeros(()))
    return _masked_steps(kl.sum(-1), mask)


def sampled_steps_kl(q: _PathBase, p: _PathBase) -> torch.Tensor:
    """Per-step one-draw KL estimate log q(z_t | z_{<t}) - log p(z_t | z_{<t}) at q's drawn path (B, T),
    zero on the steps padded in either: for guides whose steps have no closed-form KL (:class:`FlowPath`)."""
    if not isinstance(q, FlowPath):
        raise TypeError(f"a sampled path KL needs the guide's drawn path (a FlowPath), not {type(q).__name__}")
    kl = q.step_log_prob(q.path) - p.step_log_prob(q.path)  # (B, T)
    mask = q.mask if p.mask is None or p.mask is q.mask else (p.mask if q.mask is None else q.mask & p.mask)
    return _masked_steps(kl, mask)


@register_kl(GuidePath, PriorPath)
def _kl_guide_prior(q, p):
    return steps_kl(q, p).sum(-1)


@register_kl(GuidePath, GuidePath)
def _kl_guide_guide(q, p):
    return steps_kl(q, p).sum(-1)


def observation_path(x_dist, mask: torch.Tensor):
    """Observations of every step as one distribution with event shape (T, x_dim): ``x_dist`` has batch
    shape (B, T) and event shape (x_dim,); padded steps (``mask`` false) contribute nothing."""
    return x_dist.mask(mask).to_event(1)


def observed_step_log_prob(fn, value: torch.Tensor) -> torch.Tensor:
    """log p(x_t | .) of every step (B, T) of an observation site built by :func:`observation_path`, or
    of any distribution over the path with a ``step_log_prob`` (the LGSSM's ``KalmanMarginal``: log p(x_t
    | x_{<t})) (zero on padded steps)."""
    inner, mask = _unmask(fn)
    if hasattr(inner, "step_log_prob"):
        lp = inner.step_log_prob(value)
    else:
        assert getattr(inner, "reinterpreted_batch_ndims", None) == 1, type(inner)
        lp = inner.base_dist.log_prob(value)  # (B, T), masked by the MaskedDistribution inside
    return lp if mask is None else torch.where(mask[..., None], lp, lp.new_zeros(()))
