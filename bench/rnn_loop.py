#!/usr/bin/env python
"""How close the fused ReLU RNN loop (``dvae.nn.scans.ReluRNNScan``) runs to the machine's matrix-multiply rate.

    python bench/rnn_loop.py [--threads 1] [--steps 155] [--batch 20] [--hidden 600]

One forward and backward pass of a ReLU RNN over T steps (batch B, H units; the input projection
given) costs three (T B x H x H) matrix products: the forward chain (T small (B x H)(H x H) products,
one after the other), the backward chain (the same) and the recurrent weight's gradient (one large
product). The script times, in one process, in turn (median of ``--repeats``):

  loop   ``ReluRNNScan`` forward + backward (what (a), (b), (c) and (r) of bench_training run)
  small  the 2 T small products of the two chains alone, plus one large product: the least the loop
         can cost when its products run one after the other
  large  three large (T B x H)(H x H) products: the same arithmetic with no chain at all

and prints each as GFLOP/s of the loop's arithmetic (2 x 3 T B H^2 flops). Denormals are flushed, as in
the benchmarks. Writes JSON to ``--out`` (default bench/results/rnn_loop.json).
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from bench.bench_world_model import median_time as timed  # noqa: E402
from dvae.nn.scans import ReluRNNScan  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=155, help="T (155: a random batch of the training benchmark)")
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--hidden", type=int, default=600)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "rnn_loop.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    T, B, H = a.steps, a.batch, a.hidden
    x = (0.1 * torch.randn(T, B, H)).requires_grad_()  # (T, B, H) the input projection, time-major
    h0 = torch.zeros(B, H)
    w = (torch.randn(H, H) / H ** 0.5).requires_grad_()  # (H, H)
    w_plain, big = w.detach().clone(), torch.randn(T * B, H)  # (T B, H)
    h = torch.randn(B, H)

    def loop():
        ReluRNNScan.apply(x, h0, w).sum().backward()
        x.grad = w.grad = None

    def small():
        for _ in range(2 * T):
            h @ w_plain
        big.t() @ big

    def large():
        for _ in range(3):
            big @ w_plain

    flops = 2 * 3 * T * B * H * H
    res = {}
    for name, fn in (("loop", loop), ("small", small), ("large", large)):
        s = timed(fn, a.repeats)
        res[name] = {"seconds": s, "gflops": flops / s / 1e9}
        print(f"{name:6} {1000 * s:8.1f} ms  {flops / s / 1e9:6.1f} GFLOP/s")
    print(f"loop / small {res['loop']['seconds'] / res['small']['seconds']:.2f}   "
          f"loop / large {res['loop']['seconds'] / res['large']['seconds']:.2f}")
    report = {"command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + (sys.argv[1:] if argv is None else argv)),
              "threads": a.threads, "T": T, "B": B, "H": H, "load_average_start": os.getloadavg(), **res}
    from dvae.files import write_json

    write_json(a.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
