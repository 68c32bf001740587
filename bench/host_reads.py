#!/usr/bin/env python
"""Count the host's reads of tensor values in one training update (on a GPU, each is a host-device
synchronisation), for each model and form of the program, with Pyro's validation on and off.

    python bench/host_reads.py

An update is ``dvae.infer.svi.ClippedSVI.step`` (forward, backward, clip, the skip decision,
Adam) with ``DynamicalELBO``, on a tiny model and batch (the count does not depend on sizes). Reads
are calls of ``Tensor.item``, ``tolist``, ``__float__``, ``__int__`` and ``__bool__``, grouped by the
file that made them; torch's Adam reads its per-parameter step counters, which it keeps on the CPU
(no device synchronisation), and is counted apart.
"""

from __future__ import annotations

import collections
import os
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pyro  # noqa: E402
import torch  # noqa: E402

from dvae.data import collate  # noqa: E402
from dvae.infer import DynamicalELBO  # noqa: E402
from dvae.infer.svi import ClippedSVI  # noqa: E402
from dvae.models import ModelConfig, build_model  # noqa: E402

READS = ("item", "tolist", "__float__", "__int__", "__bool__")


def main() -> int:
    torch.set_num_threads(1)
    where = collections.Counter()
    on = {"count": False}
    for name in READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            if on["count"]:
                files = [f.filename for f in traceback.extract_stack()[:-1]]
                where["adam_step_counters" if any(f.endswith(os.path.join("optim", "adam.py")) for f in files)
                      else "other"] += 1
            return _real(self, *a, **k)

        setattr(torch.Tensor, name, counted)
    g = torch.Generator().manual_seed(0)
    batch = collate([torch.randn(n, 3, generator=g) for n in (5, 3)])
    print(f"{'model':6} {'program':11} {'validation':10} {'reads':>6} {'of which Adam step counters (CPU)':>34}")
    for family in ("dmm", "vrnn", "vrae"):
        for vectorized in (True, False):
            torch.manual_seed(0)
            m = build_model(ModelConfig(family, x_dim=3, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
            svi = ClippedSVI(*m.programs(vectorized=vectorized), pyro.optim.Adam({"lr": 1e-3}), DynamicalELBO(),
                             clip_norm=10.0)
            svi.step(batch)  # the first update creates the optimisers
            for validate in (True, False):
                with pyro.validation_enabled(validate):
                    where.clear()
                    on["count"] = True
                    svi.step(batch)
                    on["count"] = False
                total = sum(where.values())
                print(f"{family:6} {'vectorized' if vectorized else 'per step':11} {'on' if validate else 'off':10} "
                      f"{total:6d} {where['adam_step_counters']:34d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
