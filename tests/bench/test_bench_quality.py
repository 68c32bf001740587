"""The quality-per-second benchmark runs end to end (``--quick``): both arms train to their CPU budget,
and every figure it writes is a real, finite number."""

import json
import math
import os
import pickle
import random
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tiny_pickle(path):
    """A Nottingham-shaped polyphonic pickle: train/valid/test lists of sequences of note tuples."""
    rng = random.Random(0)

    def seq(n):
        return [tuple(sorted(rng.sample(range(40, 80), rng.randint(0, 4)))) for _ in range(n)]

    sizes = [("train", 24), ("valid", 8), ("test", 8)]
    data = {split: [seq(rng.randint(8, 24)) for _ in range(k)] for split, k in sizes}
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)


def test_bench_quality_quick(tmp_path):
    data, out = tmp_path / "tiny.pickle", tmp_path / "quality.json"
    _tiny_pickle(data)
    budget = 0.5
    # enough epochs that the CPU budget, not the epoch limit, ends arm (A) on a fast machine
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_quality.py"), "--quick",
                           "--data", str(data), "--budget", str(budget), "--flags", "--epochs 100000 --patience 0",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=180, env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr
    assert "A/B test -ELBO per step" in proc.stdout
    report = json.loads(out.read_text())
    assert report["budget_cpu_seconds"] == budget and report["machine"]["torch_threads"] == 1
    for key in ("A", "B"):
        arm = report["arms"][key]
        assert arm["stopped_by"] == "budget" and arm["updates"] > 0
        # the budget was used and respected: training stops within one update (and one collation) of it
        assert budget <= arm["train_cpu_seconds"] <= budget + arm["max_update_cpu_seconds"] + 0.25, arm
        assert arm["curve"] and all(math.isfinite(p["valid_neg_elbo_per_step"]) for p in arm["curve"])
        assert all(p["cpu_seconds"] <= arm["train_cpu_seconds"] + 1e-9 for p in arm["curve"])
        for split in ("test_best", "test_final", "valid_final"):
            b = arm[split]
            assert b["num_sequences"] == 8 and b["num_steps"] > 0
            assert 0 < b["neg_elbo_per_step"] < 200  # Bernoulli piano rolls: a positive bound
        # the IW bound (of the best parameters) is at most their ELBO, up to sampling
        iw = arm["test_best"]["nll_iw_per_step"]
        assert math.isfinite(iw) and iw <= arm["test_best"]["neg_elbo_per_step"] + 0.5
    a, b = report["arms"]["A"], report["arms"]["B"]
    assert a["model_config"]["z_dim"] != b["model_config"]["z_dim"] == 100  # (B) is Pyro's example, (A) is not
    assert a["train_config"]["vectorized"] and a["train_config"]["bucket"]
    expected = a["test_best"]["neg_elbo_per_step"] / b["test_best"]["neg_elbo_per_step"]
    assert math.isclose(report["ratio_test_neg_elbo_best"], expected) and report["goal"] == 0.65


def test_the_benchmark_seed_is_the_runs_seed_unless_the_flags_give_one():
    sys.path.insert(0, ROOT)
    from bench.bench_quality import train_args

    assert train_args({"data": "pendulum", "seed": 3, "flags": "--model vrae"}).seed == 3
    a = train_args({"data": "pendulum", "seed": 3, "flags": "--seed 5 --lr 1e-3"})
    assert a.seed == 5 and a.lr == 1e-3 and a.model == "dmm"


def test_the_variant_flags_are_the_train_verbs_settings():
    """A variant's flags, read without the command line's parser, give the settings the train verb's
    parser gives for them."""
    sys.path.insert(0, ROOT)
    from bench.bench_quality import train_args
    from dvae.cli import build_parser
    from dvae.flags import options_from_flags

    flags = "--model dmm --lr=3e-3 --per-step --z-dim 4 --rnn-type lstm --kl-start 1 --seed 2 --no-bidirectional --no-bucket"
    assert options_from_flags(flags) == {"model": "dmm", "lr": 3e-3, "per_step": True, "z_dim": 4, "rnn_type": "lstm",
                                         "kl_start": 1, "seed": 2, "bidirectional": False, "no_bucket": True}
    ours = vars(train_args({"data": "pendulum", "seed": 0, "flags": flags}))
    theirs = vars(build_parser().parse_args(["train", "--data", "pendulum", *flags.split()]))
    theirs.pop("verb")
    assert ours == theirs
    with pytest.raises(ValueError, match="'vrnn' is not a --flag"):
        options_from_flags("vrnn --lr 1")


def test_the_grid_puts_each_sweep_result_in_its_model_rate_and_data_cell():
    sys.path.insert(0, ROOT)
    from bench.bench_quality import grid_table
    from dvae.infer.trainer import default_lr

    res = lambda flags, v: {"flags": flags, "best_valid_neg_elbo_per_step": v}  # noqa: E731
    reports = [{"data": "/x/Nott.pickle", "seed": 0, "results": [res("--model vrae --lr 3e-3", 1.5), res("--model vrae", 2.5)]},
               {"data": "pendulum", "seed": 1, "results": [res("--lr 3e-3", -0.25)]}]
    lines = grid_table(reports).splitlines()
    assert lines[0] == "| model | lr | Nott, seed 0 | pendulum, seed 1 |"
    assert "| DMM | 0.003 |  | -0.250 |" in lines
    assert "| VRAE | 0.003 | 1.500 |  |" in lines
    assert f"| VRAE | {default_lr('vrae'):g} (default) | 2.500 |  |" in lines
