"""One command-line cycle for a family on tiny built-in pendulum data: train, eval (IW bound, and the
particle filter for a forward state-space model), plan. Shared by the family test files."""

import json

import numpy as np

from dvae.cli import main

TINY = ["--episodes", "6", "--steps", "12", "--z-dim", "2", "--rnn-dim", "8", "--transition-dim", "8",
        "--emission-dim", "8", "--no-progress", "--no-plots"]


def cli_cycle(capsys, run_dir, *train_args, particles: bool = True, plan: bool = True):
    """Train 2 epochs, evaluate with ``--iw-samples 4`` (and ``--particles 50``), plan: the eval JSON."""
    assert main(["train", *map(str, train_args), "--epochs", "2", "--out", str(run_dir), *TINY]) == 0, \
        capsys.readouterr().err
    capsys.readouterr()
    extra = ["--particles", "50"] if particles else []
    assert main(["eval", str(run_dir), "--iw-samples", "4", *extra]) == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert np.isfinite(out["neg_elbo_per_step"]) and np.isfinite(out["iw_nll_per_step"] if "iw_nll_per_step" in out
                                                                  else out["neg_elbo_per_step"])
    if particles:
        assert np.isfinite(out["nll_pf_per_step"])
    if plan:
        code = main(["plan", str(run_dir), "--env", "Pendulum-v1", "--episodes", "1", "--max-steps", "4",
                     "--horizon", "3", "--num-samples", "10", "--iterations", "1", "--no-baselines"])
        res = capsys.readouterr()
        assert code == 0, res.err
        assert np.isfinite(json.loads(res.out)["mean_return"])
    return out
