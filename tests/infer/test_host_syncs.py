"""The host-sync budget, counted on the CPU (bench/host_reads.py's ``HostReads``: a dispatch-mode hook
over ``aten._local_scalar_dense`` and ``aten.lift_fresh``, plus ``tolist``/``numpy``): on a GPU each
read of a tensor's value stalls the host until the device has caught up, so a training update reads
the device once (the loss and the gradient norm, together), a validation batch once, a data-parallel
update at most 3 times. Reads of the optimiser's step counters (host tensors on every device) are
counted apart. docs/performance.md ("Host reads") has the figures and the reads kept above budget."""

import os

import numpy as np
import pyro
import pytest
import torch
import torch.multiprocessing as mp

from bench.host_reads import (HostReads, count_update, count_validation, ddp_used_map, optimizer_counters,
                              tiny_trainer)
from dvae.infer.evaluation import evaluate

FAMILIES = ["dmm", "vrnn", "vrae", "vae", "lgssm"]


def test_the_counter_sees_item_float_bool_tolist_and_host_built_tensors():
    t = torch.arange(3.0)
    step = torch.tensor(1.0)
    with HostReads(host=[step]) as h:
        t.sum().item()
        float(t[0])
        bool(t[1] > 0)
        t.tolist()
        step.item()  # a host tensor on every device: counted apart
        torch.tensor([1.0, 2.0])
        torch.from_numpy(np.ones(2))
        (t * 2).sum()  # device work, no read
    assert (h.reads, h.host_reads, h.built) == (4, 1, 2)
    assert all(k.startswith("tests/infer/test_host_syncs.py:") for k in h.where), h.where


@pytest.mark.parametrize("family", FAMILIES)
def test_a_training_update_reads_the_device_once(family):
    h = count_update(tiny_trainer(family))
    assert h.reads <= 1, h.where
    assert h.host_reads > 0  # Adam's step counters: read on the host, not the device


@pytest.mark.parametrize("family", FAMILIES)
def test_an_update_of_the_training_loop_reads_the_device_once(family):
    """One more update of the loop (the batch collated on the host and moved, the step, the booking),
    counted as the difference between an epoch of 2 updates and the same epoch resumed at its second."""
    t = tiny_trainer(family, n=6)  # 6 sequences, batch 4: 2 updates per epoch
    t.train_epoch()  # the first update checks the programs (validation on); optimisers built
    reads = []
    for start in (0, 1):
        t.state["batch_in_epoch"] = start
        with HostReads(host=optimizer_counters(t.optim)) as h:
            t.train_epoch()
        reads.append(h.reads)
    assert reads[0] - reads[1] <= 1, reads


def test_the_first_update_checks_the_programs_and_data_later_ones_do_not():
    from pyro.infer.util import is_validation_enabled

    t = tiny_trainer("dmm")
    assert is_validation_enabled()
    first = count_update(t, updates_before=0)  # the counted update is the first
    assert first.reads > 1  # Pyro's and torch's checks ran
    assert count_update(t, updates_before=0).reads <= 1
    assert t.svi.validated and is_validation_enabled()  # the process's setting is left as it was


@pytest.mark.parametrize("family", FAMILIES)
def test_a_validation_batch_reads_the_device_at_most_twice_through_the_vectorized_programs(family):
    t = tiny_trainer(family)
    assert t.config.vectorized
    h = count_validation(t)  # 6 sequences: one evaluation batch
    assert h.reads <= 2, h.where


def test_an_evaluation_batch_with_iw_samples_reads_at_most_twice():
    t = tiny_trainer("dmm")
    with HostReads() as h:
        evaluate(t.model, t.valid_xs, None, iw_samples=4, vectorized=True)
    assert h.reads <= 2, h.where


def test_evaluation_sums_match_the_figures_read_one_by_one():
    """The batch's sums are read together (one read); the figures are those of per-figure reads."""
    from dvae.data import collate
    from dvae.infer.elbo import elbo_terms

    t = tiny_trainer("vrnn")
    xs = t.valid_xs
    pyro.set_rng_seed(4)
    got = evaluate(t.model, xs, None, vectorized=True)
    pyro.set_rng_seed(4)
    t.model.eval()
    program, guide = t.model.programs(vectorized=True)
    order = sorted(range(len(xs)), key=lambda i: len(xs[i]))
    batch = collate([torch.from_numpy(xs[i]) for i in order])
    with torch.no_grad():
        terms = elbo_terms(program, guide, batch, 1)
    n = sum(len(x) for x in xs)
    assert got["kl_per_step"] == terms["kl"].sum().item() / n
    assert got["recon_per_step"] == -terms["log_lik"].sum().item() / n


# --- data-parallel ------------------------------------------------------------------------------------
def _dp_worker(rank, port, out):
    from dvae.infer.distributed import DataParallelTrainer, init_from_env, shutdown
    from dvae.infer.trainer import TrainConfig
    from dvae.models import ModelConfig, build_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    env = init_from_env("cpu", timeout=30.0)
    try:
        torch.manual_seed(0)
        model = build_model(ModelConfig("dmm", x_dim=3, z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8))
        g = np.random.default_rng(0)
        xs = [g.standard_normal((L, 3)).astype(np.float32) for L in (5, 3, 4, 5, 2, 4, 3, 5)]
        t = DataParallelTrainer(model, TrainConfig(epochs=1, batch_size=4, patience=0, free_bits=0.1),
                                (xs, None), (xs, None), env=env)
        t.train_epoch()  # first update: validation on; optimisers built
        reads = []
        for start in (0, 1):
            t.state["batch_in_epoch"] = start
            with HostReads(host=optimizer_counters(t.optim), host_if=ddp_used_map) as h:
                t.train_epoch()
            reads.append((h.reads, h.host_reads, dict(h.where)))
        torch.save(reads, os.path.join(out, f"rank{rank}.pt"))
    finally:
        shutdown(env)


def test_a_data_parallel_update_reads_the_device_at_most_three_times(tmp_path):
    from tests.infer.test_distributed import free_port

    mp.start_processes(_dp_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    for rank in range(2):
        (full, host_full, where_full), (rest, host_rest, _) = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        # DDP's used-parameter map is read on the host, after one copy from the device per update
        assert host_full - host_rest > 0
        assert full - rest + 1 <= 3, (full, rest, where_full)
