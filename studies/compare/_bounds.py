"""What the exact and nonlinear sections share: fit a family under a time limit, then its bounds on
held-out sequences, per observed step in the data's original units.

Every figure here is a LOG-likelihood per observed step (nats, higher is better), moved to data units
by subtracting the standardisation's log-Jacobian ``Normalizer.log_det_per_step`` (as
``dvae.infer.evaluation.evaluate`` adds it to the NLL).
"""

from __future__ import annotations

import time
from typing import Dict, Sequence

import numpy as np
import pyro
import torch

from dvae.data import Normalizer
from dvae.data.batching import batches
from dvae.infer.elbo import elbo_terms, iw_bound
from dvae.infer.smc import evaluate_pf
from dvae.infer.trainer import TrainConfig, Trainer
from dvae.models import ModelConfig, build_model


def prepare(data, norm: Normalizer, split: str):
    """(xs, us) of a split, standardised."""
    xs, us = data.subset(split)
    return norm.x(xs), norm.u(us)


def fit(family: str, data, norm: Normalizer, time_limit: float, seed: int, device: str = "cpu",
        epochs: int = 10_000, **train) -> tuple:
    """Train ``family`` with the project's default model and training settings (``train``: TrainConfig
    fields to override) for at most ``time_limit`` seconds (or ``epochs``, or until early stopping),
    keeping the best validation parameters. Returns (model, info) with ``train_seconds``, ``epochs``,
    ``best_epoch`` and ``lr`` (the learning rate used: the family's default unless ``train`` sets it)."""
    pyro.set_rng_seed(seed)
    model = build_model(ModelConfig(family, x_dim=data.x_dim, u_dim=data.u_dim)).to(device)
    trainer = Trainer(model, TrainConfig(epochs=epochs, time_limit=time_limit, seed=seed, device=device, **train),
                      prepare(data, norm, "train"), prepare(data, norm, "valid"), norm.log_det_per_step)
    flush = torch.device(device).type == "cpu" and torch.set_flush_denormal(True)  # as `dvae train` does
    t0 = time.perf_counter()
    try:
        trainer.fit(progress=False)
    finally:
        if flush:
            torch.set_flush_denormal(False)
    wall = time.perf_counter() - t0
    if trainer.best_model is not None:
        model.load_state_dict(trainer.best_model)
    model.eval()
    return model, {"train_seconds": round(wall, 1), "epochs": trainer.state["epoch"],
                   "best_epoch": trainer.state["best_epoch"], "lr": trainer.config.lr}


@torch.no_grad()
def bounds(model, xs, us, log_det: float, ks: Sequence[int], seed: int, batch_size: int = 64,
           chunk: int = 100) -> Dict[str, float]:
    """The ELBO (one draw, analytic KL) and the K-sample IW bounds of ``model`` on (standardised)
    sequences, per observed step in data units: ``{"elbo": .., "iw_K": .., "seconds_iw_K": ..}``.
    For an exact model (the LGSSM) the ELBO is the exact log-likelihood."""
    model_fn, guide_fn = model.programs(vectorized=True)
    pyro.set_rng_seed(seed)
    steps, elbo = 0, 0.0
    out: Dict[str, float] = {}
    for batch in batches(xs, us, batch_size, by_length=True):
        steps += int(batch.lengths.sum())
        elbo += elbo_terms(model_fn, guide_fn, batch.to(model.device))["elbo"].sum().item()
    out["elbo"] = elbo / steps - log_det
    if getattr(model, "exact", False):
        return out
    for k in ks:
        pyro.set_rng_seed(seed + k)
        t0, total = time.perf_counter(), 0.0
        for batch in batches(xs, us, batch_size, by_length=True):
            total += iw_bound(model_fn, guide_fn, batch.to(model.device), k, chunk=chunk).sum().item()
        out[f"iw_{k}"] = total / steps - log_det
        out[f"seconds_iw_{k}"] = round(time.perf_counter() - t0, 2)
    return out


@torch.no_grad()
def particle_filter(model, xs, us, log_det: float, particles: Sequence[int], seed: int,
                    batch_size: int = 64) -> Dict[str, float]:
    """The bootstrap particle filter with the model's learned networks, per observed step in data units:
    ``{"pf_P": .., "seconds_pf_P": ..}`` for each particle count P."""
    out: Dict[str, float] = {}
    for p in particles:
        pyro.set_rng_seed(seed + p)
        t0 = time.perf_counter()
        res = evaluate_pf(model, xs, us, p, log_det, batch_size=max(1, min(batch_size, 200_000 // p)))
        out[f"pf_{p}"] = -res["nll_pf_per_step"]
        out[f"seconds_pf_{p}"] = round(time.perf_counter() - t0, 2)
    return out


def finite(v) -> bool:
    return isinstance(v, float) and bool(np.isfinite(v))
