"""One SVI update with a safety net: a global gradient-norm clip, and a skip of non-finite updates.

:class:`ClippedSVI` is ``pyro.infer.SVI`` whose step clips the gradients of all parameters to one
global norm and skips (returns nan for) an update whose loss or gradient is not finite, instead of
corrupting the parameters (the trainer, :class:`dvae.infer.trainer.Trainer`, then restores its last
good snapshot). The loss and the norm are read to the host together: the one host-device sync of an
update. Data-parallel training subclasses it (:class:`dvae.infer.distributed.DataParallelSVI`).
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, SVI
from pyro.infer.util import is_validation_enabled, zero_grads


class ClippedSVI(SVI):
    """``pyro.infer.SVI`` with a global gradient-norm clip; a non-finite loss or gradient skips the
    update (returns nan) instead of corrupting the parameters.

    Argument validation (Pyro's and torch's checks of every distribution's parameters and values, and
    of the programs' structure: on a GPU each check is a host-device synchronisation) runs on the
    first update only, with the process's setting (``pyro.enable_validation``): that update checks the
    programs and the data they score (which the loaders checked once as they read it). Later updates
    run without it; a NaN parameter then gives a NaN loss, skipped as a refused one is."""

    def __init__(self, model, guide, optim, loss, clip_norm: float = 0.0):
        # a Pyro ELBO, or an object with its own loss_and_grads (dvae.infer.objectives.IWAEObjective)
        own = {} if isinstance(loss, ELBO) or not hasattr(loss, "loss_and_grads") else {"loss_and_grads": loss.loss_and_grads}
        super().__init__(model, guide, optim, loss, **own)
        self.clip_norm = clip_norm
        self.validated = False

    def validation(self):
        """The validation context of this update: the process's setting on the first, off after."""
        on = is_validation_enabled() and not self.validated
        self.validated = True
        return pyro.validation_enabled(on)

    def step(self, *args, **kwargs) -> float:
        with self.validation(), poutine.trace(param_only=True) as param_capture:
            try:
                loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
            except ValueError as e:  # distribution validation: a NaN/inf parameter (a fault, not a bug)
                if "invalid values" not in str(e):
                    raise
                loss = math.nan
        return self.clip_and_update(param_capture.trace, loss)

    def clip_and_update(self, param_trace, loss: float) -> float:
        """Clip the gradients of the parameters in ``param_trace`` to the global norm, then update them;
        a non-finite loss or gradient skips the update (returns nan). The parameters are taken in the
        trace's order (not a set's), so the norm is summed in the same order in every process."""
        params = list(dict.fromkeys(site["value"].unconstrained() for site in param_trace.nodes.values()))
        grads = [p for p in params if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(grads, self.clip_norm if self.clip_norm > 0 else math.inf)
        if torch.is_tensor(loss):  # DynamicalELBO: a device tensor; the loss and the norm read in one transfer
            loss, norm = torch.stack([loss.detach(), norm.to(loss)]).tolist()  # THE host-device sync of an update
        else:
            norm = float(norm)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            zero_grads(params)
            return math.nan
        self.optim(params)
        zero_grads(params)
        return float(loss)
