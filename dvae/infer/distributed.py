"""Data-parallel SVI on ``torch.distributed``: one process per device, launched by ``torchrun``.

Every process (rank) holds a copy of the model. For each batch of the single-process trainer (the
same batches: same seed, same shuffle, same length buckets) rank r takes the sequences r, r + W,
r + 2W, ... of the batch (W = world size), padded to the batch's length. The loss is the module
:class:`ELBOLoss` (the same Pyro programs and the same :class:`~dvae.infer.elbo.DynamicalELBO` as one
process) wrapped in ``torch.nn.parallel.DistributedDataParallel``, whose backward all-reduces and
averages the gradients. Each rank scales its programs by ``W / N``, N the real steps of the whole
batch (known on every rank: the lengths are metadata), so the averaged gradient is the gradient of
the batch's per-step ELBO, exactly the single-process objective at the same global batch size. Free
bits floor a KL column summed over the batch: :class:`DataParallelELBO` sums those columns across
ranks first (one all-reduce), so they too act as in one process.

Rank 0 alone writes files (``dvae.cli``); validation sums are reduced across ranks; decisions that
end a loop (a stop request, the time limit) are taken together; every collective runs under the
process group's timeout, and a failed collective raises :class:`~dvae.errors.DistributedError` with
one line naming the rank. ``docs/scaling.md`` has the commands and what was tested.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pyro
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pyro import poutine
from torch.nn.parallel import DistributedDataParallel

from dvae.data.batch import SequenceBatch, collate
from dvae.data.batching import batch_indices, sequence_lengths
from dvae.device import resolve_device
from dvae.errors import DistributedError
from dvae.infer import rng
from dvae.infer.elbo import DynamicalELBO, SiteKL
from dvae.infer.evaluation import bounds_per_step, evaluate_sums, missing_log_det
from dvae.infer.svi import ClippedSVI
from dvae.infer.trainer import Trainer

DEFAULT_TIMEOUT = 300.0
"""Seconds a collective waits for the other ranks before the run fails (``dvae train --dist-timeout``)."""


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a data-parallel run."""

    rank: int
    """Global rank, 0 .. world_size - 1 (rank 0 writes the run directory)."""
    world_size: int
    """Number of processes."""
    local_rank: int
    """Rank on this node (the CUDA device index)."""
    device: torch.device
    """The device this rank trains on (cuda:local_rank, or cpu)."""
    backend: str
    """nccl (CUDA) or gloo (CPU)."""
    timeout: float
    """Seconds a collective waits before failing."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: str = "auto", timeout: float = DEFAULT_TIMEOUT) -> Optional[DistEnv]:
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT); None when this is a single process (no torchrun, or one process in all).

    ``device``: auto, cpu or cuda; CUDA ranks use ``cuda:LOCAL_RANK`` and NCCL, CPU ranks gloo.
    """
    world = launched_world_size()
    if world <= 1:
        return None
    if not timeout > 0:
        raise ValueError("--dist-timeout must be positive")
    if "RANK" not in os.environ:
        raise ValueError(f"WORLD_SIZE is {world} but RANK is not set: launch the processes with torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA "
                             "devices on this node (--nproc_per_node must not exceed the GPUs)")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl":
        # a collective that times out then raises in this thread (a DistBackendError, which collective()
        # turns into one line) instead of NCCL's watchdog ending the process with a C++ stack; it also
        # makes the host wait for each collective, which the update's one read does anyway
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
        except Exception as e:  # rendezvous failed or timed out
            raise DistributedError(f"rank {rank} of {world}: could not join the process group "
                                   f"({_first_line(e)})") from e
    return DistEnv(rank, world, local_rank, dev, backend, timeout)


def shutdown(env: Optional[DistEnv]) -> None:
    """Leave the process group (no collective)."""
    if env is not None and dist.is_initialized():
        dist.destroy_process_group()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def collective(env: DistEnv, what: str, fn, *args, **kwargs):
    """Run ``fn`` (a collective, or code containing one); its failure becomes a DistributedError that
    names this rank, what it was doing and the timeout."""
    try:
        return fn(*args, **kwargs)
    except (DistributedError, torch.OutOfMemoryError):
        raise
    except (RuntimeError, dist.DistError) as e:  # gloo/NCCL report a lost peer or a timeout as these
        raise DistributedError(
            f"rank {env.rank} of {env.world_size}: {what} failed ({_first_line(e)}); where another rank failed "
            f"or stopped responding, its own error comes first; collectives give up after {env.timeout:g} s "
            "(--dist-timeout)") from e


def all_reduce_sum(env: DistEnv, values: Sequence[float], what: str = "an all-reduce") -> List[float]:
    """Sums of ``values`` over the ranks (float64), the same on every rank."""
    t = torch.tensor(list(values), dtype=torch.float64, device=env.device)  # (n,)
    collective(env, what, dist.all_reduce, t)
    return t.tolist()


def shard(idx: Sequence[int], rank: int, world_size: int):
    """Rank ``rank``'s sequences of a batch ``idx``: positions rank, rank + W, ... and True; where the
    batch has no sequence for this rank (fewer sequences than ranks), its first sequence and False
    (the rank runs it with every site masked out: it takes part in the collectives and adds zero)."""
    rows = list(idx[rank::world_size])
    return (rows, True) if rows else (list(idx[:1]), False)


def pad_steps(batch: SequenceBatch, num_steps: int) -> SequenceBatch:
    """Pad a batch with zeros at the end to ``num_steps`` steps (as :func:`collate` pads); every field is
    kept: the conditions ``c`` as they are, the observation mask padded with False (nothing observed)."""
    extra = num_steps - batch.num_steps
    assert extra >= 0, (batch.num_steps, num_steps)
    if extra == 0:
        return batch
    x = F.pad(batch.x, (0, 0, 0, extra))  # (B, num_steps, x_dim)
    u = None if batch.u is None else F.pad(batch.u, (0, 0, 0, extra))  # (B, num_steps, u_dim)
    mask = F.pad(batch.mask, (0, extra))  # (B, num_steps), False on the new steps
    obs_mask = None if batch.obs_mask is None else F.pad(batch.obs_mask, (0, 0, 0, extra))  # (B, num_steps, x_dim)
    return SequenceBatch(x, u, mask, batch.lengths, batch.c, obs_mask)


class DataParallelELBO(DynamicalELBO):
    """:class:`DynamicalELBO` on one rank's share of a batch, free bits computed on the whole batch.

    Free bits floor each KL column summed over the batch: ``max(S_t, c_t)``. Here S_t and c_t (the
    floor, from the real sequences) are summed over the ranks in one all-reduce; a rank's column is
    its own KL where the global sum is above the floor (its gradient then is the single-process one)
    and ``c_t / W`` where not (no gradient), so the ranks' terms add up to ``max(S_t, c_t)``. Without
    free bits the ELBO is linear in the sequences and nothing is reduced here."""

    def __init__(self, env: DistEnv, num_particles: int = 1, free_bits: float = 0.0, **kwargs):
        super().__init__(num_particles=num_particles, free_bits=free_bits, **kwargs)
        self.env = env

    def kl_columns(self, sites: Dict[str, SiteKL]) -> Dict[str, torch.Tensor]:
        if self.free_bits <= 0 or not sites:
            return super().kl_columns(sites)
        names = list(sites)
        kls = [sites[n].kl.reshape(-1, sites[n].kl.shape[-1]).sum(0) for n in names]  # each (S,)
        reals = [sites[n].real.reshape(-1, sites[n].real.shape[-1]).sum(0) for n in names]  # each (S,)
        sizes = [k.numel() for k in kls]
        flat = torch.cat([k.detach().double() for k in kls] + [r.double() for r in reals])  # (2 * sum S,)
        collective(self.env, "the free-bits all-reduce", dist.all_reduce, flat)
        total_kl, total_real = flat.split(sum(sizes))
        out = {}
        for name, kl, s_kl, n_real in zip(names, kls, total_kl.split(sizes), total_real.split(sizes)):
            # the floor as one process computes it, from the whole batch's count of real sequences
            floor = self.free_bits * sites[name].dims * n_real.round().long()  # (S,)
            out[name] = torch.where(s_kl.to(kl.dtype) > floor, kl, floor / self.env.world_size)
        return out


class ELBOLoss(torch.nn.Module):
    """The training objective as a module, so that DistributedDataParallel can wrap it: ``forward(batch,
    annealing_factor, scale, active)`` is the differentiable -ELBO estimate of ``elbo`` on the Pyro
    programs ``model``/``guide`` (called as ``model(batch, annealing_factor, scale)``), whose parameters
    are those of ``net``. ``active=False`` runs the programs with every site masked out (a rank with no
    sequence in this batch): a zero loss with zero gradients. A distribution refusing a NaN parameter
    (a numerical fault) gives a NaN loss tied to every parameter, so that the all-reduce still happens
    and every rank skips the update together."""

    def __init__(self, net: torch.nn.Module, model, guide, elbo: DynamicalELBO):
        super().__init__()
        self.net = net
        self.programs = (model, guide)  # bound methods, not modules
        self.elbo = elbo

    def forward(self, batch: SequenceBatch, annealing_factor: float, scale: float, active: bool = True):
        model, guide = self.programs
        if not active:
            off = torch.zeros((), dtype=torch.bool, device=batch.x.device)
            model, guide = poutine.mask(model, mask=off), poutine.mask(guide, mask=off)
        try:
            return self.elbo.differentiable_loss(model, guide, batch, annealing_factor, scale)
        except ValueError as e:  # distribution validation: a NaN/inf parameter (a fault, not a bug)
            if "invalid values" not in str(e):
                raise
            return math.nan * sum(p.sum() for p in self.net.parameters())


class DataParallelSVI(ClippedSVI):
    """:class:`ClippedSVI` whose gradient is DistributedDataParallel's all-reduced one.

    ``step(batch, annealing_factor, num_steps, active)``: this rank's share of a batch whose real steps
    number ``num_steps`` in all ranks together; returns the batch's per-step loss (the same on every
    rank), or nan when the update was skipped (on every rank: a non-finite loss or gradient anywhere)."""

    def __init__(self, loss_module: DistributedDataParallel, optim, env: DistEnv, clip_norm: float = 0.0):
        model, guide = loss_module.module.programs
        super().__init__(model, guide, optim, loss_module.module.elbo, clip_norm=clip_norm)
        self.loss_module, self.env = loss_module, env

    def loss_and_grads_global(self, batch, annealing_factor, num_steps: int, active: bool = True) -> torch.Tensor:
        """Forward and backward through DDP (gradients all-reduced: the batch's per-step ELBO gradient);
        returns the batch's per-step loss, summed over the ranks: a float64 0-dim tensor on the device,
        reduced there and read by :meth:`clip_and_update` with the gradient norm, in one read."""
        scale = self.env.world_size / num_steps
        loss = self.loss_module(batch, annealing_factor, scale, active)
        collective(self.env, "the gradient all-reduce (DistributedDataParallel backward)", loss.backward)
        # an inactive rank's loss is zero but for its share of the free-bits floors
        total = loss.detach().to(torch.float64) / self.env.world_size  # ()
        collective(self.env, "the loss all-reduce", dist.all_reduce, total)
        return total

    def step(self, batch, annealing_factor, num_steps: int, active: bool = True) -> float:
        with self.validation(), poutine.trace(param_only=True) as param_capture:
            loss = self.loss_and_grads_global(batch, annealing_factor, num_steps, active)
        return self.clip_and_update(param_capture.trace, loss)


class DataParallelTrainer(Trainer):
    """:class:`Trainer` as one rank of a data-parallel run (see the module docstring).

    The same batches, annealing, fault recovery and checkpoints as one process; this rank trains on its
    share of every batch and validates on its share of the validation split (sums reduced). Every rank
    draws its own random numbers (seeded by ``seed`` and the rank); checkpoints hold every rank's RNG
    state, so a run resumed with the same number of processes continues exactly; with another number,
    each rank is reseeded from (seed, rank, update count).
    """

    def __init__(self, model, config, train_data, valid_data, log_det_per_step: float = 0.0, device=None,
                 env: Optional[DistEnv] = None, x_log_std=None):
        assert env is not None and env.world_size > 1, "DataParallelTrainer needs a DistEnv of 2 or more ranks"
        if config.objective != "elbo" or config.train_samples != 1:
            raise ValueError(f"data-parallel training takes the one-draw elbo objective only (got objective "
                             f"{config.objective!r}, train_samples {config.train_samples})")
        super().__init__(model, config, train_data, valid_data, log_det_per_step, device or env.device,
                         x_log_std=x_log_std)
        # missing entries (--missing nan): every rank sums the log-Jacobian difference of its steps with
        # missing entries, and the sums are reduced every update (on every rank, masked batch or not)
        self.missing = bool(getattr(getattr(model, "config", None), "missing", False)) and x_log_std is not None
        self.env = env
        if config.batch_size < env.world_size:
            raise ValueError(f"--batch-size {config.batch_size} is smaller than the number of processes "
                             f"{env.world_size}: every process needs a sequence of every batch")
        self.train_lengths = sequence_lengths(self.train_xs)
        self.elbo = DataParallelELBO(env, free_bits=config.free_bits, beta=config.beta)
        module = ELBOLoss(model, self._model, self._guide, self.elbo)
        # find_unused_parameters: a program need not touch every parameter (the DMM's mean-field guide,
        # the LGSSM's B without controls, the transition on a batch of one step); a parameter no rank
        # used keeps no gradient, as in one process. (DDP warns once per rank where all were used.)
        self.loss_module = collective(env, "wrapping the model in DistributedDataParallel", DistributedDataParallel,
                                      module, device_ids=None if env.device.type == "cpu" else [env.device.index],
                                      find_unused_parameters=True)
        self.svi = DataParallelSVI(self.loss_module, self.optim, env, clip_norm=config.clip_norm)
        valid_xs, valid_us = valid_data
        mine = list(range(env.rank, len(valid_xs), env.world_size))
        self.valid_share = (_take(valid_xs, mine), None if valid_us is None else _take(valid_us, mine))
        self.num_valid = len(valid_xs)
        self._reseed(0)

    def _reseed(self, step: int) -> None:
        pyro.set_rng_seed((self.config.seed * 1_000_003 + 7919 * (self.env.rank + 1) + step) % 2 ** 63)

    def _agree(self, flag: bool) -> bool:
        return all_reduce_sum(self.env, [float(flag)], "agreeing on when to stop")[0] > 0

    def validate(self) -> Dict[str, float]:
        """:meth:`Trainer.validate` on this rank's share of the validation split, the sums reduced (a
        collective: every rank calls it)."""
        xs, us = self.valid_share
        sums = evaluate_sums(self.model, xs, us, self.config.eval_batch_size, device=self.device,
                             vectorized=self.config.vectorized, log_det_per_step=self.log_det,
                             x_log_std=self.x_log_std)
        keys = ("num_steps", "elbo", "log_lik", "kl", "iw", "extra_log_det")
        total = dict(zip(keys, all_reduce_sum(self.env, [sums[k] for k in keys], "the validation all-reduce")))
        total["num_steps"] = int(round(total["num_steps"]))
        return bounds_per_step(total, self.num_valid, self.log_det)

    def _shard_batch(self, idx: List[int]):
        """(this rank's padded share of batch ``idx``, the batch's real steps, active)."""
        rows, active = shard(idx, self.env.rank, self.env.world_size)
        xs = [self.train_xs[i] for i in rows]
        batch = collate([torch.from_numpy(x) for x in xs],
                        None if self.train_us is None else [torch.from_numpy(self.train_us[i]) for i in rows],
                        missing=any(np.isnan(x).any() for x in xs))  # looked up in numpy: no tensor read
        num_steps = sum(self.train_lengths[i] for i in idx)
        return pad_steps(batch, max(self.train_lengths[i] for i in idx)), num_steps, active

    def train_epoch(self, deadline: Optional[float] = None,
                    on_update: Optional[Callable[[float], None]] = None) -> Optional[Dict[str, float]]:
        """:meth:`Trainer.train_epoch` on this rank's share of each batch; stopping is decided together."""
        self.model.train()
        gen = torch.Generator().manual_seed(self.config.seed * 100003 + self.state["epoch"])
        chunks = batch_indices(self.train_lengths, self.config.batch_size, gen, self.config.bucket)
        acc = self.state["partial"]
        start = self.clock()
        t_last = start
        for i, idx in enumerate(chunks):
            if i < self.state["batch_in_epoch"]:
                continue
            if self._agree(self._stop_requested):
                self.stopped = True
                break
            if self._snapshot is None or self.state["step"] % self.snapshot_every == 0:
                self._take_snapshot()
            batch, n, active = self._shard_batch(idx)
            batch = batch.to_device(self.device)
            loss = self.svi.step(batch, self.annealing_factor(self.state["step"]), n, active)
            extra = 0.0
            if self.missing:  # the batch's log-Jacobian difference of steps with missing entries, all ranks
                mine = missing_log_det(batch, self.log_det, self.x_log_std).sum().item() if active else 0.0
                extra = all_reduce_sum(self.env, [mine], "summing the missing entries' log-Jacobian")[0]
            self._record_update(acc, loss, n, i, extra)
            if on_update is not None:
                on_update(loss)
            now = self.clock()
            acc["seconds"] += now - t_last
            t_last = now
            if deadline is not None and self._agree(now > deadline):
                break
        self.state["train_seconds"] += self.clock() - start
        if self.stopped:
            return None
        return self._end_epoch(acc)

    def _term_sums(self, acc: dict):
        """Every rank's share of the epoch's plain terms, summed (a collective)."""
        return tuple(all_reduce_sum(self.env, [acc.get("log_lik_sum", 0.0), acc.get("kl_sum", 0.0)],
                                    "summing the logged terms"))

    # --- checkpoints: every rank's RNG state ---------------------------------------------------------
    def checkpoint(self) -> dict:
        """:meth:`Trainer.checkpoint` plus ``world_size`` and ``rng_ranks`` (every rank's RNG state). A
        collective: every rank calls it; rank 0 writes it."""
        states: List[Optional[dict]] = [None] * self.env.world_size  # each rank's rng.capture()
        collective(self.env, "gathering the RNG states", dist.all_gather_object, states, rng.capture())
        ckpt = super().checkpoint()
        ckpt.update(world_size=self.env.world_size, rng_ranks=states, **states[0])
        return ckpt

    def load_checkpoint(self, ckpt: dict) -> None:
        super().load_checkpoint(ckpt)
        states = ckpt.get("rng_ranks")
        if states is not None and len(states) == self.env.world_size:
            rng.restore(states[self.env.rank])  # a dict of CPU and CUDA states (a bare CPU state before)
        else:  # written by another number of processes (or one): a fresh stream per rank
            self._reseed(self.state["step"])


def _take(xs, idx: List[int]):
    """The sequences ``idx`` of ``xs`` (a lazy view where ``xs`` is lazily read data)."""
    return xs.take(idx) if hasattr(xs, "take") else [xs[i] for i in idx]
