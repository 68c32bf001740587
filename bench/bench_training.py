#!/usr/bin/env python
"""Training speed and memory: the per-step Pyro program, the time-vectorized one, and plain PyTorch.

    python bench/bench_training.py            # the full run (a few minutes on a 2-core CPU)
    python bench/bench_training.py --quick    # tiny sizes, seconds: a smoke test of this script

For each model (DMM, VRNN, VRAE) at the configuration of Pyro's DMM example (z 100, transition 200,
emission 100, ReLU RNN of 600 units, batch 20, Adam lr 3e-4, Bernoulli observations of 88 keys) on
JSB-shaped synthetic piano rolls (lengths drawn uniformly in 60..160 steps; or ``--data`` a polyphonic
pickle), it times training updates of four variants, all with the same networks, initial weights and
random draws (their first-batch losses agree, which the table reports):

    (a0) per-step program (a site per step), Pyro's TraceMeanField_ELBO
    (a)  per-step program, dvae's DynamicalELBO
    (b)  time-vectorized program (path and observations one site each), DynamicalELBO
    (c)  plain PyTorch: ``dvae.infer.direct.direct_loss`` (same networks, same estimator, the ELBO
         written in torch) with torch.optim.Adam
    (b') (b) as ``dvae train`` runs it by default: length-bucketed batches (each epoch's sequences sorted
         by length, cut into batches, the batches in a shuffled order: ``dvae.data.batching.batch_indices``
         with ``by_length=True``), where (a0), (a), (b) and (c) take the same random batches (Pyro's
         example); over the same sequences per epoch, so the same real steps, fewer padded ones
    (r)  the recurrent loops alone, forward and backward, on the batches of (a): the guide's path (and
         the VRAE's decoder RNN), the part of an update that has to run step by step whatever the
         program's form, with no other term and no optimizer step (``recurrent_loops``). (r)/(a) is a
         floor under (b)/(a): no rewrite of the program around these loops can go below it

Two kinds of ratio: on the same batches, (b)/(a), (b)/(a0), (b)/(c); as users run them, (b')/(a) and
(b')/(a0) (the vectorized program on bucketed batches against the per-step one on random batches).
Beside them the floor (r)/(a) and (r)/(b), the share of (b) spent in the loops.
The padded steps (batch size x longest length, summed over an epoch's batches) of both batchings are
reported beside the real steps.

An "epoch" is a fixed set of ``--batches`` batches (default 10), after ``--warmup`` batches (default 2);
``--rounds`` epochs (default 5) are timed. Every (model, variant) lives in its own forked worker
process (its own allocator and Pyro param store, so its peak memory is its own), and the four
variants of a model run interleaved, batch by batch in rotating order, so that a busy neighbour on
the machine slows them all alike; each ratio is taken per epoch, then the median over epochs.
Denormal floats are flushed to zero in every variant (``torch.set_flush_denormal(True)``; see
``--keep-denormals``): otherwise the backpropagated gradients of the ReLU RNNs decay into denormals
and the x86 slow path they take makes times depend on where training happens to be.

Memory, on CPU: ``peak_rss_delta_mb``, growth of the worker's peak resident set
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) from just before its first update to its end;
``saved_mb``, the bytes of the tensors autograd keeps for the backward pass of one update (parameters
excluded, each storage counted once), an allocator-independent figure. On CUDA, ``peak_cuda_mb`` is
``torch.cuda.max_memory_allocated``.

Writes a table to stdout and JSON to ``--out`` (default bench/results/training.json;
bench/results/training-quick.json with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# no torch computation in this (parent) process: the workers are forked from it
import pyro  # noqa: E402
import torch  # noqa: E402

try:  # imported lazily by the first optimizer step (~80 MB): import it once here, not in every worker
    import torch._dynamo  # noqa: E402,F401
except ImportError:  # pragma: no cover
    pass

FULL = dict(z_dim=100, transition_dim=200, emission_dim=100, rnn_dim=600, rnn_type="rnn", batch_size=20, lr=3e-4,
            min_len=60, max_len=160, batches=10, warmup=2, rounds=5)
QUICK = dict(z_dim=4, transition_dim=8, emission_dim=8, rnn_dim=16, rnn_type="rnn", batch_size=4, lr=3e-4,
             min_len=5, max_len=12, batches=3, warmup=1, rounds=1)
FAMILIES = ["dmm", "vrnn", "vrae"]
VARIANTS = {
    "per_step_tmf": "(a0) per-step, TraceMeanField_ELBO",
    "per_step": "(a) per-step, DynamicalELBO",
    "vectorized": "(b) vectorized, DynamicalELBO",
    "torch": "(c) plain PyTorch",
    "vectorized_bucketed": "(b') vectorized, length-bucketed batches",
    "loops": "(r) the recurrent loops alone (a floor)",
}
SAME_BATCHES = ["per_step_tmf", "per_step", "vectorized", "torch"]  # the variants fed identical batches
X_DIM = 88


# --- data ------------------------------------------------------------------------------------------
def synthetic_rolls(n: int, min_len: int, max_len: int, seed: int):
    """JSB-shaped binary piano rolls: lengths uniform in [min_len, max_len], 88 keys, about 4 notes on,
    held for a few steps (each key keeps its state with probability 0.75)."""
    rng = np.random.default_rng(seed)
    rolls = []
    for L in rng.integers(min_len, max_len + 1, size=n):
        x = np.zeros((L, X_DIM), dtype=np.float32)
        state = rng.random(X_DIM) < 0.05
        for t in range(L):
            keep = rng.random(X_DIM) < 0.75
            state = np.where(keep, state, rng.random(X_DIM) < 0.05)
            x[t] = state
        rolls.append(x)
    return rolls


def polyphonic_rolls(path: str, n: int, seed: int):
    from dvae.data import load_polyphonic

    data = load_polyphonic(path)
    train = data.subset("train")[0]
    idx = np.random.default_rng(seed).permutation(len(train))[:n]
    return [train[i] for i in idx]


# --- one (model, variant) in a worker process -------------------------------------------------------
def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def recurrent_loops(model, batch) -> torch.Tensor:
    """What every form of the model's ELBO must run step by step, and nothing else: the guide's path
    (the DMM's backward RNN and combiner chain, the VRNN's filter; the VRAE's encoder RNN and its
    q(z | x)) and, for the VRAE, the decoder RNN from the drawn z. A sum of its outputs, to backpropagate
    through: the same loop code (``run_rnn``, ``Combiner.scan``, ``VRNNFilterScan``) as (a), (b) and (c)."""
    if hasattr(model, "decoder_states"):  # one code per sequence, decoded by an RNN (the VRAE)
        loc, scale = model.posterior_params(batch)  # (B, z_dim): the encoder RNN's loop
        z = loc + torch.randn_like(loc) * scale
        s = model.decoder_states(batch, z)  # (B, T, rnn_dim): the decoder's
        return loc.sum() + scale.sum() + s.sum()
    if hasattr(model, "guide_path"):
        loc, scale, z = model.guide_path(batch)  # (B, T, z_dim) each
        return loc.sum() + scale.sum() + z.sum()
    q = model.posterior_path(batch)  # any other family with path densities (STORN, SRNN, RSSM): its guide's path
    return q.loc.sum() + q.scale.sum() + q.path.sum()


def _make_step(variant: str, model, lr: float):
    from dvae.infer import DynamicalELBO
    from dvae.infer.direct import direct_loss

    if variant == "loops":  # forward and backward of the loops only: no other term, no optimizer step

        def step(batch):
            loss = recurrent_loops(model, batch)
            loss.backward()
            model.zero_grad(set_to_none=True)
            return loss.item()

        return step

    if variant == "torch":
        opt = torch.optim.Adam(model.parameters(), lr=lr)

        def step(batch):
            loss = direct_loss(model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss.item()

        return step
    elbo = pyro.infer.TraceMeanField_ELBO() if variant == "per_step_tmf" else DynamicalELBO()
    programs = model.programs(vectorized=variant == "vectorized")
    svi = pyro.infer.SVI(*programs, pyro.optim.Adam({"lr": lr}), elbo)
    return svi.step


def _saved_bytes(step, batch, model) -> int:
    """Bytes of the tensors autograd saves for backward in one update (parameters excluded, each
    storage once)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(batch)
    return sum(seen.values())


class Worker:
    """One (model, variant) in a forked process: builds the model (same seed for every variant), then
    runs training updates on the parent's command, so the parent can interleave the variants batch by
    batch (a busy neighbour on the machine then slows them all alike)."""

    def __init__(self, spec: dict):
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=Worker._main, args=(child, spec))
        self.proc.start()
        child.close()
        self.name = f"{spec['family']}/{spec['variant']}"
        self._recv()  # ready

    def _recv(self):
        status, payload = self.conn.recv()
        if status != "ok":
            self.proc.join()
            raise RuntimeError(f"{self.name} failed:\n{payload}")
        return payload

    def step(self, i: int):
        """Run update i (an index into the batches); returns (seconds, loss)."""
        self.conn.send(("step", i))
        return self._recv()

    def finish(self) -> dict:
        self.conn.send(("finish", None))
        out = self._recv()
        self.proc.join()
        return out

    @staticmethod
    def _main(conn, spec):
        try:
            _serve(conn, spec)
        except BaseException:  # report, never hang the parent
            conn.send(("error", traceback.format_exc()))
        finally:
            conn.close()


def _serve(conn, spec: dict) -> None:
    from dvae.data import collate
    from dvae.models import ModelConfig, build_model

    torch.set_num_threads(spec["threads"])
    if spec["flush_denormal"]:
        torch.set_flush_denormal(True)
    device = torch.device(spec["device"])
    c = spec["config"]
    torch.manual_seed(spec["seed"])
    model = build_model(ModelConfig(spec["family"], x_dim=X_DIM, z_dim=c["z_dim"], rnn_dim=c["rnn_dim"],
                                    rnn_type=c["rnn_type"], transition_dim=c["transition_dim"],
                                    emission_dim=c["emission_dim"], likelihood="bernoulli")).to(device)
    rolls = spec["rolls"]
    batches = [collate([torch.from_numpy(rolls[i]) for i in idx]).to(device) for idx in spec["batch_lists"]]
    step = _make_step(spec["variant"], model, c["lr"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    pyro.set_rng_seed(spec["seed"])
    rss_before = _maxrss_mb()
    conn.send(("ok", None))
    while True:
        cmd, arg = conn.recv()
        if cmd == "step":
            sync()
            t0 = time.perf_counter()
            loss = step(batches[arg])
            sync()
            conn.send(("ok", (time.perf_counter() - t0, loss)))
            continue
        out = {"peak_rss_mb": _maxrss_mb(), "peak_rss_delta_mb": _maxrss_mb() - rss_before}
        if device.type == "cuda":
            out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        out["saved_mb"] = _saved_bytes(step, batches[0], model) / 2 ** 20
        conn.send(("ok", out))
        return


def batchings(lengths, config: dict, seed: int) -> dict:
    """The sequence indices of every batch, per batching: ``random`` (consecutive rolls, which are in
    random order: Pyro's example) and ``bucketed`` (``dvae train``'s default): the warm-up sequences and
    the timed ones (one epoch) each bucketed by length on their own, so that an epoch of either batching
    holds the same sequences (the same real steps)."""
    from dvae.data.batching import batch_indices

    B, w, n = config["batch_size"], config["warmup"], len(lengths)
    random = [list(range(i, i + B)) for i in range(0, n, B)]
    gen = torch.Generator().manual_seed(seed)
    bucketed = []
    for lo, hi in ((0, w * B), (w * B, n)):
        bucketed += [[lo + i for i in idx] for idx in batch_indices(lengths[lo:hi], B, gen, by_length=True)]
    return {"random": random, "bucketed": bucketed}


def epoch_steps(batch_lists, lengths) -> dict:
    """Real and padded steps (batch size x longest length, summed) of the batches."""
    return {"real_steps": int(sum(lengths[i] for b in batch_lists for i in b)),
            "padded_steps": int(sum(len(b) * max(lengths[i] for i in b) for b in batch_lists))}


def run_family(family: str, config: dict, rolls, common: dict, log) -> dict:
    """Every variant of one model, interleaved batch by batch: ``rounds`` epochs of ``batches`` timed
    updates each (after ``warmup`` untimed ones), the order of the variants rotating at every batch."""
    lists = batchings([len(r) for r in rolls], config, common["seed"])

    def spec(v):
        bucketed = v == "vectorized_bucketed"
        return {"family": family, "variant": "vectorized" if bucketed else v, "config": config, "rolls": rolls,
                "batch_lists": lists["bucketed" if bucketed else "random"], **common}

    workers = {v: Worker(spec(v)) for v in VARIANTS}
    names = list(VARIANTS)
    n_batches = len(rolls) // config["batch_size"]
    runs = {v: {"epoch_seconds": [], "batch_seconds": [], "losses": []} for v in names}
    k = 0
    for i in range(config["warmup"]):
        for v in names[k % len(names):] + names[:k % len(names)]:
            runs[v]["losses"].append(workers[v].step(i % n_batches)[1])
        k += 1
    for r in range(config["rounds"]):
        epoch = {v: 0.0 for v in names}
        for i in range(config["batches"]):
            for v in names[k % len(names):] + names[:k % len(names)]:
                seconds, loss = workers[v].step((config["warmup"] + i) % n_batches)
                epoch[v] += seconds
                runs[v]["batch_seconds"].append(seconds)
                runs[v]["losses"].append(loss)
            k += 1
        for v in names:
            runs[v]["epoch_seconds"].append(epoch[v])
        log(f"  {family:5} epoch {r + 1}/{config['rounds']}: " + "  ".join(f"{v} {epoch[v]:.3f} s" for v in names))
    for v in names:
        runs[v].update(workers[v].finish())
    return runs


# --- the grid -------------------------------------------------------------------------------------
def machine_info(threads: int, device: str) -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": threads, "device": device,
            "python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__,
            "platform": platform.platform(), "git_commit": commit}


def summarise(results: dict) -> dict:
    summary = {}
    for fam, runs in results.items():
        row = {}
        for v, run in runs.items():
            epochs = run["epoch_seconds"]
            row[v] = {"epoch_seconds_median": statistics.median(epochs), "epoch_seconds_min": min(epochs),
                      "epoch_seconds": epochs, "peak_rss_delta_mb": run["peak_rss_delta_mb"],
                      "peak_rss_mb": run["peak_rss_mb"], "saved_mb": run["saved_mb"]}
            if "peak_cuda_mb" in run:
                row[v]["peak_cuda_mb"] = run["peak_cuda_mb"]
        first = {v: runs[v]["losses"][0] for v in SAME_BATCHES}  # same weights, same draws, same batch
        ref = first["per_step"]
        row["first_batch_loss"] = first
        row["first_batch_loss_max_rel_diff"] = max(abs(x - ref) / abs(ref) for x in first.values())

        def ratio(num, den):  # per epoch (the variants ran side by side), then the median over epochs
            return statistics.median(n / d for n, d in zip(runs[num]["epoch_seconds"], runs[den]["epoch_seconds"]))

        row["ratios"] = {"b_over_a": ratio("vectorized", "per_step"), "b_over_a0": ratio("vectorized", "per_step_tmf"),
                         "b_over_c": ratio("vectorized", "torch"),
                         "b_bucketed_over_a": ratio("vectorized_bucketed", "per_step"),
                         "b_bucketed_over_a0": ratio("vectorized_bucketed", "per_step_tmf"),
                         "b_bucketed_over_b": ratio("vectorized_bucketed", "vectorized"),
                         "r_over_a": ratio("loops", "per_step"), "r_over_b": ratio("loops", "vectorized")}
        summary[fam] = row
    return summary


def print_table(summary: dict, batches: int, cuda: bool, steps: dict = None) -> None:
    mem = "peak CUDA MB" if cuda else "peak RSS +MB"
    head = f"{'model':6} {'variant':42} {'s/epoch':>8} {'ms/batch':>9} {mem:>13} {'saved MB':>9}"
    print(head)
    print("-" * len(head))
    for fam, row in summary.items():
        for v, label in VARIANTS.items():
            r = row[v]
            m = r["peak_cuda_mb"] if cuda else r["peak_rss_delta_mb"]
            print(f"{fam:6} {label:42} {r['epoch_seconds_median']:8.3f} "
                  f"{1000 * r['epoch_seconds_median'] / batches:9.1f} {m:13.1f} {r['saved_mb']:9.1f}")
        q = row["ratios"]
        print(f"{fam:6} ratios: (b)/(a) {q['b_over_a']:.3f}   (b)/(a0) {q['b_over_a0']:.3f}   "
              f"(b)/(c) {q['b_over_c']:.3f} [same batches]   (b')/(a) {q['b_bucketed_over_a']:.3f}   "
              f"(b')/(a0) {q['b_bucketed_over_a0']:.3f} [(b') bucketed, (a) random]   floor (r)/(a) {q['r_over_a']:.3f}   "
              f"(r)/(b) {q['r_over_b']:.3f}   first-batch loss agrees "
              f"across (a0)-(c) to {row['first_batch_loss_max_rel_diff']:.1e} (relative)")
    if steps:
        print("steps per epoch: " + "   ".join(f"{k} batches {v['real_steps']} real, {v['padded_steps']} padded"
                                               for k, v in steps.items()))
    print(f"s/epoch: {batches} batches after the warm-up, median over epochs; ratios: median over epochs of the "
          "per-epoch ratio (the variants ran interleaved batch by batch); peak RSS +MB: growth of the "
          "worker's peak resident set over the run; saved MB: tensors autograd keeps for one backward pass")


RATIO_COLUMNS = [("b_over_a", "(b)/(a)", "same batching"), ("b_over_a0", "(b)/(a0)", "same batching"),
                 ("b_over_c", "(b)/(c)", "same batching"), ("b_bucketed_over_a", "(b')/(a)", "bucketed vs random"),
                 ("b_bucketed_over_b", "(b')/(b)", "bucketed vs random"), ("r_over_a", "(r)/(a)", "floor"),
                 ("r_over_b", "(r)/(b)", "loops' share of (b)")]


def markdown(report: dict) -> str:
    """The two tables of docs/performance.md (times and memory; ratios) from a results file."""
    summary, batches = report["summary"], report["config"]["batches"]
    cuda = report["machine"]["device"] == "cuda"
    mem = "peak CUDA (MB)" if cuda else "peak RSS growth (MB)"
    lines = [f"| model | variant | s / epoch ({batches} batches) | ms / batch | {mem} | saved for backward (MB) |",
             "|---|---|---:|---:|---:|---:|"]
    for fam, row in summary.items():
        for v, label in report["variants"].items():
            if v not in row:
                continue
            r = row[v]
            m = r["peak_cuda_mb"] if cuda else r["peak_rss_delta_mb"]
            lines.append(f"| {fam.upper()} | {label} | {r['epoch_seconds_median']:.2f} | "
                         f"{1000 * r['epoch_seconds_median'] / batches:.0f} | {m:.0f} | {r['saved_mb']:.1f} |")
    cols = [c for c in RATIO_COLUMNS if all(c[0] in row["ratios"] for row in summary.values())]
    lines += ["", "| model | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---:|" * len(cols),
              "| | " + " | ".join(c[2] for c in cols) + " |"]
    for fam, row in summary.items():
        lines.append(f"| {fam.upper()} | " + " | ".join(f"{row['ratios'][c[0]]:.2f}" for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds): a smoke test")
    p.add_argument("--data", help="a polyphonic pickle (e.g. ../shared/data/polyphonic/Nottingham.pickle) "
                                  "instead of synthetic JSB-shaped rolls")
    p.add_argument("--models", default=",".join(FAMILIES))
    p.add_argument("--batches", type=int, help="timed batches per epoch (default 10; quick 3)")
    p.add_argument("--warmup", type=int, help="untimed batches first (default 2; quick 1)")
    p.add_argument("--rounds", type=int, help="timed epochs (default 5; quick 1)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch threads per worker (default: torch's default, here %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--keep-denormals", action="store_true",
                   help="do not flush denormal floats to zero (torch.set_flush_denormal); on x86 CPUs the "
                        "gradients of a ReLU RNN decay into denormals over long sequences and every variant "
                        "slows down by up to 2x at random points of training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON output (default bench/results/training.json; quick: training-quick.json)")
    p.add_argument("--markdown-from", metavar="JSON", help="only print the tables of docs/performance.md from a "
                   "results file this script wrote (no timing)")
    a = p.parse_args(argv)
    if a.markdown_from:
        with open(a.markdown_from) as f:
            print(markdown(json.load(f)))
        return 0

    config = dict(QUICK if a.quick else FULL)
    for key in ("batches", "warmup", "rounds"):
        if getattr(a, key) is not None:
            config[key] = getattr(a, key)
    families = [f for f in a.models.split(",") if f]
    n = config["batch_size"] * (config["warmup"] + config["batches"])
    if a.data:
        rolls, data_desc = polyphonic_rolls(a.data, n, a.seed), {"source": a.data}
    else:
        rolls = synthetic_rolls(n, config["min_len"], config["max_len"], a.seed)
        data_desc = {"source": "synthetic JSB-shaped binary rolls", "x_dim": X_DIM,
                     "lengths": f"uniform {config['min_len']}..{config['max_len']}"}
    data_desc.update(num_sequences=len(rolls), mean_length=float(np.mean([len(r) for r in rolls])))
    lengths = [len(r) for r in rolls]
    timed = slice(config["warmup"], config["warmup"] + config["batches"])  # one timed epoch
    steps = {k: epoch_steps(v[timed], lengths) for k, v in batchings(lengths, config, a.seed).items()}
    out_path = a.out or os.path.join(ROOT, "bench", "results", "training-quick.json" if a.quick else "training.json")

    config["flush_denormal"] = not a.keep_denormals
    info = machine_info(a.threads, a.device)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    common = {"seed": a.seed, "threads": a.threads, "device": a.device, "flush_denormal": not a.keep_denormals}
    results = {f: run_family(f, config, rolls, common, lambda m: print(m, file=sys.stderr, flush=True))
               for f in families}
    summary = summarise(results)
    print_table(summary, config["batches"], a.device == "cuda", steps)

    report = {"command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + (sys.argv[1:] if argv is None else argv)),
              "machine": info, "load_average_start": load_start, "load_average_end": os.getloadavg(),
              "wall_seconds": time.perf_counter() - t0, "config": config, "data": data_desc,
              "variants": VARIANTS, "summary": summary, "epoch_steps": steps,
              "runs": {f: {v: {k: r[k] for k in r if k != "losses"} | {"first_losses": r["losses"][:3]}
                           for v, r in vs.items()} for f, vs in results.items()}}
    from dvae.files import write_json

    write_json(out_path, report)
    print(f"wrote {os.path.relpath(out_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
