#!/usr/bin/env python
"""dvae.nn's recurrences at a git revision against the working tree's, timed in one process.

    python bench/nn_before_after.py [--ref main] [--rounds 15] [--threads 1]

Loads ``dvae/nn/__init__.py`` as it was at ``--ref`` (``git show REF:dvae/nn/__init__.py``, a module
that must hold the whole of dvae.nn, as it did before the split into modules) as a temporary module,
and times, at the training benchmark's shapes (T 155, B 20; bench/bench_training.py), forward +
backward of:

  scan-relu   Recurrence.scan, ReLU cell, input 200, H 600 (the VRNN's recurrence at the benchmark's sizes)
  scan-gru    Recurrence.scan, GRU cell, input 88, H 64
  enc-relu    SequenceEncoder (backward direction), ReLU RNN, input 88, H 600 (the DMM's guide RNN)
  enc-gru     SequenceEncoder (backward direction), GRU, input 88, H 64

each with the same weights and inputs in both versions (outputs and gradients checked equal), the two
versions interleaved call by call in alternating order so that a busy neighbour slows both alike; the
best of ``--rounds`` calls each, and the ratio new / old. Denormals are flushed, as in the benchmarks.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

import dvae.nn as new  # noqa: E402

T, B = 155, 20


def load_old(ref: str):
    src = subprocess.run(["git", "show", f"{ref}:dvae/nn/__init__.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "dvae_nn_old.py")
        with open(path, "w") as f:
            f.write(src)
        spec = importlib.util.spec_from_file_location("dvae_nn_old", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return mod


def cases(old):
    """name -> (make(module) -> (net, run())), run doing forward + backward and returning what to compare."""
    def scan(kind, in_dim, hidden):
        def make(mod):
            torch.manual_seed(0)
            net = mod.Recurrence(kind, in_dim, hidden)
            x = torch.randn(B, T, in_dim, requires_grad=True)  # (B, T, in_dim)
            w = torch.randn(B, T, hidden)

            def run():
                for p in [x, *net.parameters()]:
                    p.grad = None
                out = net.scan(x, net.initial(B))  # (B, T, hidden)
                (out * w).sum().backward()
                return [out.detach(), x.grad] + [p.grad for p in net.parameters()]
            return run
        return make

    def encoder(kind, in_dim, hidden):
        def make(mod):
            torch.manual_seed(0)
            net = mod.SequenceEncoder(in_dim, hidden, kind, "backward")
            y = torch.randn(B, T, in_dim, requires_grad=True)  # (B, T, in_dim)
            lengths = torch.randint(60, T + 1, (B,))
            lengths[0] = T
            w = torch.randn(B, T, hidden)

            def run():
                for p in [y, *net.parameters()]:
                    p.grad = None
                out = net(y, lengths)  # (B, T, hidden)
                (out * w).sum().backward()
                return [out.detach(), y.grad] + [p.grad for p in net.parameters()]
            return run
        return make

    return {"scan-relu": scan("rnn", 200, 600), "scan-gru": scan("gru", 88, 64),
            "enc-relu": encoder("rnn", 88, 600), "enc-gru": encoder("gru", 88, 64)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ref", default="main", help="the git revision whose dvae/nn/__init__.py is the old version")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    old = load_old(args.ref)
    print(f"old: {args.ref}:dvae/nn/__init__.py  new: working tree  T {T} B {B}  threads {args.threads}  "
          f"best of {args.rounds} (ms)")
    for name, make in cases(old).items():
        runs = {"old": make(old), "new": make(new)}
        a, b = runs["old"](), runs["new"]()  # also a warm-up
        exact = all(torch.equal(u, v) for u, v in zip(a, b))
        close = all(torch.allclose(u, v, rtol=1e-5, atol=1e-6) for u, v in zip(a, b))
        best = {"old": float("inf"), "new": float("inf")}
        for r in range(args.rounds):
            for k in (("old", "new") if r % 2 == 0 else ("new", "old")):
                t0 = time.perf_counter()
                runs[k]()
                best[k] = min(best[k], time.perf_counter() - t0)
        print(f"{name:10s} old {1e3 * best['old']:8.2f}  new {1e3 * best['new']:8.2f}  new/old "
              f"{best['new'] / best['old']:.3f}  equal: {'bitwise' if exact else 'close' if close else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
