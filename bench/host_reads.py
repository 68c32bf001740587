#!/usr/bin/env python
"""Count the host's reads of tensor values (on a GPU, each is a host-device synchronisation) and the
tensors built from host data (each a host-to-device copy), on the CPU, for the steps of training:

    python bench/host_reads.py [--device cuda] [--out bench/results/host_reads.json]

:class:`HostReads` is the counter (importable: ``from bench.host_reads import HostReads``; the tests
of tests/infer/test_host_syncs.py hold the budgets with it). It is a ``TorchDispatchMode`` that sees
every ``aten._local_scalar_dense`` (``.item()``, ``float()``, ``int()``, ``bool()`` of a tensor: a
read) and ``aten.lift_fresh`` (``torch.tensor``/``as_tensor``/``from_numpy`` of host data: a built
tensor), plus ``Tensor.tolist`` and ``Tensor.numpy`` (no aten call on the CPU; on a GPU the copy to
the host is a read). Tensors that stay on the host on every device are named in ``host`` and their
reads counted apart: torch's (non-fused) Adam keeps its per-parameter step counters on the CPU and
reads each one per update, a read of host memory even on CUDA (``optimizer_counters`` lists them).

Every read is booked under the first frame outside torch (file:line), so the report says who reads.
The counts do not depend on tensor sizes: the figures come from tiny models and batches.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import traceback
from typing import Callable, Iterable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

_ATEN = torch.ops.aten
_TORCH_DIR = os.path.dirname(torch.__file__)


def _caller() -> str:
    """file:line of the innermost frame outside torch's own files (and outside this module)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not frame.filename.startswith(_TORCH_DIR) and frame.filename != __file__:
            name = frame.filename
            name = os.path.relpath(name, ROOT) if name.startswith(ROOT) else name.split("site-packages" + os.sep)[-1]
            return f"{name}:{frame.lineno}"
    return "?"


class HostReads(TorchDispatchMode):
    """Count reads and host-built tensors while active (``with HostReads() as h: ...``).

    ``reads``: values read by the host (the budget); ``built``: tensors built from host data;
    ``host_reads``: reads of the tensors in ``host`` (host-resident on every device, not counted in
    ``reads``); ``where``: reads by caller (file:line); ``built_where``: built tensors by caller."""

    def __init__(self, host: Iterable[torch.Tensor] = (), host_if: Optional[Callable[[torch.Tensor, str], bool]] = None):
        super().__init__()
        self.host_ids = {id(t) for t in host}
        self.host_if = host_if  # (tensor, caller) -> True for a read of host memory on every device
        self.reads = self.built = self.host_reads = 0
        self.where: collections.Counter = collections.Counter()
        self.built_where: collections.Counter = collections.Counter()
        self._patched = {}

    def _read(self, tensor) -> None:
        where = _caller()
        if id(tensor) in self.host_ids or (self.host_if is not None and self.host_if(tensor, where)):
            self.host_reads += 1
            return
        self.reads += 1
        self.where[where] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is _ATEN._local_scalar_dense.default:
            self._read(args[0])
        elif func is _ATEN.lift_fresh.default:
            self.built += 1
            self.built_where[_caller()] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for name in ("tolist", "numpy"):  # no aten call on the CPU; a copy to the host on a GPU
            real = getattr(torch.Tensor, name)
            self._patched[name] = real

            def counted(tensor, *a, _real=real, **k):
                self._read(tensor)
                return _real(tensor, *a, **k)

            setattr(torch.Tensor, name, counted)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, real in self._patched.items():
            setattr(torch.Tensor, name, real)
        self._patched = {}
        return super().__exit__(*exc)

    def report(self) -> dict:
        return {"reads": self.reads, "built": self.built, "host_reads": self.host_reads,
                "where": dict(self.where), "built_where": dict(self.built_where)}


def optimizer_counters(optim) -> list:
    """The step counters of a Pyro optimiser's torch optimisers (``state[p]["step"]``) that live on the
    host: where torch's Adam keeps them on every device unless fused or capturable."""
    if getattr(optim, "shared", None) is not None:  # dvae.infer.optim.SharedAdam: one torch optimiser
        opts = [optim.shared]
    else:
        opts = getattr(optim, "optim_objs", None)
        opts = opts.values() if opts is not None else [optim]
    out = []
    for inner in opts:
        for state in inner.state.values():
            step = state.get("step")
            if torch.is_tensor(step) and step.device.type == "cpu" and not _fused(inner):
                out.append(step)
    return out


def ddp_used_map(tensor: torch.Tensor, caller: str) -> bool:
    """Reads of DistributedDataParallel's map of used parameters (``find_unused_parameters=True``): its
    reducer reads one int32 entry per parameter in backward, from a host tensor on every device (on
    CUDA the map is all-reduced on the device and copied back once per update: one synchronisation,
    which a test adds by hand)."""
    return tensor.dtype == torch.int32 and tensor.dim() == 0 and caller.startswith("dvae/infer/distributed.py:")


def _fused(opt) -> bool:
    return any(g.get("fused") or g.get("capturable") for g in opt.param_groups)


# --- the figures ---------------------------------------------------------------------------------
FAMILIES = ("dmm", "vrnn", "vrae", "vae", "lgssm")


def tiny_trainer(family: str, vectorized: bool = True, n: int = 6, seed: int = 0, device="cpu", **train):
    """A default-flag Trainer on a tiny model and tiny data (the counts do not depend on sizes), on
    ``device`` (on CUDA with what the trainer picks there: the fused shared Adam, resident data)."""
    import numpy as np

    from dvae.infer.trainer import TrainConfig, Trainer
    from dvae.models import ModelConfig, build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig(family, x_dim=3, u_dim=0, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
    g = np.random.default_rng(seed)
    xs = [g.standard_normal((L, 3)).astype(np.float32) for L in (5, 3, 4, 5, 2, 4)[:n]]
    config = TrainConfig(epochs=1, batch_size=4, patience=0, vectorized=vectorized, **train)
    return Trainer(model.to(device), config, (xs, None), (xs, None), device=torch.device(device))


def count_update(trainer, updates_before: int = 1) -> HostReads:
    """The reads of one training update (``trainer.svi.step``) after ``updates_before`` others (the
    first creates the optimisers and checks the programs)."""
    from dvae.data import collate

    batch = collate([torch.from_numpy(x) for x in trainer.train_xs[:4]]).to(trainer.device)
    n = int(batch.lengths.sum())
    for _ in range(updates_before):
        trainer.svi.step(batch, 0.5, 1.0 / n)
    with HostReads(host=optimizer_counters(trainer.optim)) as h:
        trainer.svi.step(batch, 0.5, 1.0 / n)
    return h


def count_validation(trainer) -> HostReads:
    """The reads of the trainer's validation pass over one batch (its whole validation split, which
    fits one evaluation batch)."""
    with HostReads() as h:
        trainer.validate()
    return h


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.add_argument("--device", default="cpu", help="cpu or cuda (on CUDA every counted read is a synchronisation)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    print(f"{'model':6} {'program':11} {'what':22} {'reads':>5} {'built':>5} {'host (Adam steps)':>17}  where")
    for family in FAMILIES:
        for vectorized in (True, False):
            t = tiny_trainer(family, vectorized, device=a.device)
            for what, h in (("training update", count_update(t)), ("validation batch", count_validation(t))):
                row = {"model": family, "vectorized": vectorized, "what": what, **h.report()}
                rows.append(row)
                where = ", ".join(f"{k} x{v}" for k, v in sorted(h.where.items()))
                print(f"{family:6} {'vectorized' if vectorized else 'per step':11} {what:22} {h.reads:5d} "
                      f"{h.built:5d} {h.host_reads:17d}  {where}")
    if a.out:
        from dvae.run import atomic_write_text

        atomic_write_text(a.out, json.dumps({"torch": torch.__version__, "device": a.device, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
