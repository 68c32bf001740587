"""Data-parallel SVI with two CPU processes (gloo): the same gradients as one process on the same global
batch and the same draws, the same run when resumed, and a lost rank ends the job with a clear message.

The processes are forked (each test: one start of two processes);
the command-line run under ``torchrun`` is in tests/cli/test_distributed_cli.py.
"""

import os
import socket
import time
import traceback

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from dvae.data import collate
from dvae.infer.distributed import DataParallelTrainer, init_from_env, pad_steps, shard, shutdown
from dvae.infer.trainer import TrainConfig, Trainer
from dvae.models import ModelConfig, build_model

WORLD = 2
# (family, guide, vectorized, free_bits, u_dim, batch): the batch as indices into DATA; the last one
# has a single sequence, so rank 1's share is empty (it runs a masked copy and adds nothing)
CASES = [
    ("dmm", "dks", True, 0.0, 2, (3, 0, 5, 2, 7)),
    ("dmm", "dks", False, 0.0, 2, (3, 0, 5, 2, 7)),
    ("dmm", "dks", True, 0.6, 2, (3, 0, 5, 2, 7)),
    ("dmm", "dks", False, 0.6, 2, (3, 0, 5, 2, 7)),
    ("dmm", "mean_field", True, 0.0, 2, (1, 4, 6)),
    ("vrnn", "dks", True, 0.6, 2, (3, 0, 5, 2, 7)),
    ("vrae", "dks", True, 0.6, 0, (3, 0, 5, 2, 7)),
    ("lgssm", "dks", True, 0.0, 0, (3, 0, 5, 2)),
    ("dmm", "dks", True, 0.6, 2, (4,)),
]
ANNEALING = 0.3
LENGTHS = (9, 4, 7, 9, 2, 6, 5, 8)


def data(u_dim, dtype=np.float64):
    g = np.random.default_rng(1)
    xs = [g.standard_normal((L, 3)).astype(dtype) for L in LENGTHS]
    us = [g.standard_normal((L, u_dim)).astype(dtype) for L in LENGTHS] if u_dim else None
    return xs, us


class FixedNoise:
    """Stands in for ``Tensor.normal_``, the guides' only source of noise (``Normal.rsample`` and the
    vectorized guides both call it on a (B, ...) block): the k-th call fills its block with the rows
    ``rows`` of a (batch_size, ...) block drawn from a generator seeded by k. Two processes holding
    rows 0, 2, 4 and 1, 3 of a batch then draw exactly what one process holding all of it draws."""

    def __init__(self, rows, batch_size):
        self.rows, self.batch_size, self.calls = list(rows), batch_size, 0

    def __call__(self, tensor, mean=0.0, std=1.0, *, generator=None):
        assert tensor.shape[0] == len(self.rows), (tensor.shape, self.rows)
        g = torch.Generator().manual_seed(1000 + self.calls)
        self.calls += 1
        full = torch.randn((self.batch_size,) + tuple(tensor.shape[1:]), generator=g, dtype=torch.float64)
        with torch.no_grad():
            tensor.copy_((full[self.rows] * std + mean).to(tensor.dtype))
        return tensor

    def method(self):
        """A function to set as ``torch.Tensor.normal_`` (a plain function binds as a method)."""
        return lambda tensor, *args, **kwargs: self(tensor, *args, **kwargs)


def _trainer(case, env=None, **config):
    family, guide, vectorized, free_bits, u_dim, _ = case
    torch.manual_seed(0)
    model = build_model(ModelConfig(family, x_dim=3, u_dim=u_dim, z_dim=3, rnn_dim=6, transition_dim=6,
                                    emission_dim=6, guide=guide)).double()
    config = TrainConfig(**{"batch_size": 5, "free_bits": free_bits, "vectorized": vectorized, "kl_start": 1.0,
                            **config})
    xs, us = data(u_dim)
    if env is None:
        return Trainer(model, config, (xs, us), (xs, us))
    return DataParallelTrainer(model, config, (xs, us), (xs, us), env=env)


def case_grads(case, env=None):
    """(loss, {name: grad}) of one update on the case's batch: one process on the whole batch, or this
    rank on its share (DDP's all-reduced gradient), with the same draws either way."""
    idx = list(case[-1])
    t = _trainer(case, env)
    original = torch.Tensor.normal_
    try:
        if env is None:
            xs, us = t.train_xs, t.train_us
            batch = collate([torch.from_numpy(xs[i]) for i in idx], None if us is None else [torch.from_numpy(us[i]) for i in idx])
            n = int(batch.lengths.sum())
            torch.Tensor.normal_ = FixedNoise(range(len(idx)), len(idx)).method()
            loss = t.svi.loss_and_grads(t.svi.model, t.svi.guide, batch, ANNEALING, 1.0 / n)
        else:
            batch, n, active = t._shard_batch(idx)
            rows = [p for p in range(len(idx))][env.rank::env.world_size] or [0]
            torch.Tensor.normal_ = FixedNoise(rows, len(idx)).method()
            loss = t.svi.loss_and_grads_global(batch, ANNEALING, n, active)
    finally:
        torch.Tensor.normal_ = original
    return float(loss), {k: None if p.grad is None else p.grad.clone() for k, p in t.model.named_parameters()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank, port, timeout=30.0):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    return init_from_env("cpu", timeout=timeout)


def _grads_worker(rank, port, out):
    env = _join(rank, port)
    try:
        torch.save([case_grads(case, env) for case in CASES], os.path.join(out, f"rank{rank}.pt"))
    finally:
        shutdown(env)


def spawn(fn, *args):
    """Run ``fn(rank, *args)`` in two forked processes (forked: no second import of torch and pyro);
    an error in either fails the test."""
    mp.start_processes(fn, args=args, nprocs=WORLD, join=True, start_method="fork")


def test_two_gloo_processes_give_the_gradients_of_one_process_on_the_same_batch(tmp_path):
    spawn(_grads_worker, free_port(), str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for case, (loss0, g0), (loss1, g1) in zip(CASES, *ranks):
        loss, grads = case_grads(case)
        assert loss0 == loss1 and loss0 == pytest.approx(loss, rel=1e-10), case
        assert g0.keys() == grads.keys()
        for name, g in grads.items():
            assert (g is None) == (g0[name] is None) == (g1[name] is None), (case, name)
            if g is not None:
                assert torch.equal(g0[name], g1[name]), (case, name)  # DDP: every rank the same gradient
                torch.testing.assert_close(g0[name], g, rtol=1e-9, atol=1e-12, msg=f"{case} {name}")
    # the free-bits floor is active on some steps and not on others: a floor summed per rank would differ
    for fb_case, plain_case in ((CASES[2], CASES[0]), (CASES[3], CASES[1])):
        (l_fb, g_fb), (l_plain, g_plain) = case_grads(fb_case), case_grads(plain_case)
        assert l_fb > l_plain and not torch.equal(g_fb["combiner.loc.weight"], g_plain["combiner.loc.weight"])


def test_shard_splits_a_batch_by_rank_and_pads_to_its_length():
    assert shard([7, 3, 5, 1, 2], 0, 2) == ([7, 5, 2], True)
    assert shard([7, 3, 5, 1, 2], 1, 2) == ([3, 1], True)
    assert shard([7], 1, 2) == ([7], False)
    b = collate([torch.ones(2, 3), torch.ones(4, 3)], [torch.ones(2, 1), torch.ones(4, 1)])
    p = pad_steps(b, 6)
    assert p.x.shape == (2, 6, 3) and p.u.shape == (2, 6, 1) and p.mask.shape == (2, 6)
    assert p.mask.sum().item() == 6 and p.x[:, 4:].abs().sum() == 0 and p.lengths.tolist() == [2, 4]


def _resume_worker(rank, port, out):
    env = _join(rank, port)
    try:
        case = ("dmm", "dks", True, 0.5, 2, ())

        def trainer(epochs):
            return _trainer(case, env, epochs=epochs, batch_size=3, patience=0, kl_start=0.1, anneal_epochs=2)

        full = trainer(3).fit(progress=False)
        part = trainer(1)
        part.fit(progress=False)
        ckpt = part.checkpoint()
        resumed = trainer(3)
        resumed.load_checkpoint(ckpt)
        rows = resumed.fit(progress=False)
        torch.save({"full": full, "resumed": rows, "world_size": ckpt["world_size"],
                    "rngs": len(ckpt["rng_ranks"])}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        shutdown(env)


def test_a_two_process_run_resumed_from_its_checkpoint_equals_an_uninterrupted_one(tmp_path):
    spawn(_resume_worker, free_port(), str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    assert r0["world_size"] == 2 and r0["rngs"] == 2
    assert len(r0["full"]) == len(r0["resumed"]) == 3
    for a, b, c in zip(r0["full"], r0["resumed"], r1["resumed"]):
        for key in ("train_loss", "valid_neg_elbo_per_step", "valid_kl_per_step"):
            assert a[key] == pytest.approx(b[key], rel=1e-9), key
            assert b[key] == c[key], key  # reduced figures: the same on every rank


def _failing_worker(rank, port, out, mode):
    env = _join(rank, port, timeout=4.0)
    t = _trainer(("dmm", "dks", True, 0.0, 2, ()), env, epochs=3, patience=0)
    if rank == 1:
        step = t.svi.step

        def failing(*args, **kwargs):
            if t.state["step"] == 1:
                if mode == "hang":
                    time.sleep(120)
                raise RuntimeError("simulated failure on rank 1")
            return step(*args, **kwargs)

        t.svi.step = failing
    start = time.perf_counter()
    try:
        t.fit(progress=False)
    except Exception as e:
        with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
            f.write(f"{time.perf_counter() - start:.1f}\n{type(e).__name__}: {e}\n{traceback.format_exc()}")
        raise


@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_a_failing_rank_ends_the_job_with_a_clear_message(tmp_path, mode):
    """Rank 1 fails at its second update (its process exits with an error, or hangs); rank 0, waiting in
    a collective, stops with a DistributedError naming itself and the timeout, within the process
    group's timeout (4 s), instead of waiting forever."""
    ctx = mp.get_context("fork")
    port = free_port()
    procs = [ctx.Process(target=_failing_worker, args=(r, port, str(tmp_path), mode)) for r in range(WORLD)]
    for p in procs:
        p.start()
    try:
        procs[0].join(60)
        assert procs[0].exitcode not in (None, 0), "rank 0 did not stop"
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(10)
    seconds, first = (tmp_path / "rank0.txt").read_text().splitlines()[:2]
    assert first.startswith("DistributedError: rank 0 of 2: ") and "--dist-timeout" in first, first
    assert float(seconds) < 30


def test_pad_steps_keeps_the_observation_mask_and_the_conditions():
    x = torch.ones(2, 4, 3)
    x[0, 1, 2] = float("nan")  # one missing entry: collate makes an obs_mask
    b = collate([x[0, :2], x[1]], None, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])
    assert b.obs_mask is not None
    p = pad_steps(b, 6)
    assert p.obs_mask.shape == (2, 6, 3) and p.c is b.c
    assert torch.equal(p.obs_mask[:, :4], b.obs_mask) and not p.obs_mask[:, 4:].any()
    assert not p.obs_mask[0, 1, 2] and p.obs_mask[0, 1, :2].all()


def _missing_trainer(env=None):
    """The exact LGSSM (no sampling: its bound is log p(x)) on standardised data with missing entries."""
    torch.manual_seed(0)
    model = build_model(ModelConfig("lgssm", x_dim=3, u_dim=0, z_dim=2, missing=True)).double()
    xs, _ = data(0)
    g = np.random.default_rng(5)
    for x in xs:
        x[g.random(x.shape) < 0.3] = np.nan  # about 30% of the entries missing
    log_std = [0.3, -0.2, 0.5]  # the data's per-dimension log std: the missing steps' log-Jacobian
    config = TrainConfig(epochs=2, batch_size=4, patience=0, kl_start=1.0)
    if env is None:
        return Trainer(model, config, (xs, None), (xs, None), sum(log_std), x_log_std=log_std)
    return DataParallelTrainer(model, config, (xs, None), (xs, None), sum(log_std), env=env, x_log_std=log_std)


def _hooked_fit(trainer) -> dict:
    """``fit`` with the public hooks recording: the rows, every update's loss, every validation's bounds."""
    losses, valid = [], []
    rows = trainer.fit(progress=False, on_update=losses.append, on_validate=valid.append)
    return {"rows": rows, "losses": losses, "valid": valid}


def _missing_worker(rank, port, out):
    env = _join(rank, port)
    try:
        torch.save(_hooked_fit(_missing_trainer(env)), os.path.join(out, f"rank{rank}.pt"))
    finally:
        shutdown(env)


def test_two_processes_train_and_validate_data_with_missing_entries_as_one_process(tmp_path):
    """The obs_mask reaches every rank's batch and the log-Jacobian of the observed entries is summed
    over the ranks, in training and in validation: the exact LGSSM's figures equal one process's."""
    spawn(_missing_worker, free_port(), str(tmp_path))
    got0, got1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    one = _hooked_fit(_missing_trainer())
    rows0, rows1, single = got0["rows"], got1["rows"], one["rows"]
    assert len(rows0) == len(single) == 2
    for a, b, c in zip(single, rows0, rows1):
        for key in ("train_loss", "valid_neg_elbo_per_step", "valid_recon_per_step"):
            assert b[key] == c[key], key
            assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), key
    # the hooks: every update's loss (reduced over the ranks) and every validation's bounds, as one process's
    assert len(got0["losses"]) == len(one["losses"]) == 2 * 2  # 2 epochs of 2 batches of 4 sequences
    assert got0["losses"] == got1["losses"] and got0["losses"] == pytest.approx(one["losses"], rel=1e-9)
    assert [v["neg_elbo_per_step"] for v in got0["valid"]] == [r["valid_neg_elbo_per_step"] for r in rows0]
    assert got0["valid"] == got1["valid"] and len(got0["valid"]) == 2
    assert got0["valid"][0]["num_steps"] == one["valid"][0]["num_steps"]  # the whole split, summed over the ranks
