"""`dvae train --model storn|srnn|rssm|dsae|kvae`, then `dvae eval` (bounds and the particle filter) and `dvae plan`,
end to end on tiny Pendulum data; the new flags' bad input."""

import json
import os

import numpy as np
import pytest

from tests.conftest import run_cli as run

TINY = ["--episodes", "8", "--steps", "16", "--epochs", "2", "--z-dim", "2", "--rnn-dim", "8",
        "--transition-dim", "8", "--emission-dim", "8", "--batch-size", "4", "--seed", "0", "--no-progress",
        "--no-plots"]


@pytest.mark.parametrize("family, extra", [("storn", []), ("srnn", ["--guide", "resq"]),
                                           ("rssm", ["--kl-balance", "0.8", "--free-bits", "0.5"]),
                                           ("dsae", ["--emission-scale", "state", "--v-dim", "3"]), ("kvae", ["--kvae-components", "2", "--kvae-state-dim", "3"])])
def test_train_eval_and_plan(capsys, tmp_path, family, extra):
    code, _, err = run(capsys, "train", "--model", family, *TINY, *extra, "--out", tmp_path / "run")
    assert code == 0, err
    cfg = json.loads(open(tmp_path / "run" / "config.json").read())["model"]
    assert cfg["model"] == family
    assert cfg["guide"] == ("resq" if family == "srnn" else "dks")
    assert cfg["kl_balance"] == (0.8 if family == "rssm" else 0.0)
    assert (cfg["kvae_components"], cfg["kvae_state_dim"]) == ((2, 3) if family == "kvae" else (3, 0))
    assert cfg["v_dim"] == (3 if family == "dsae" else 0)
    code, ev, err = run(capsys, "eval", tmp_path / "run", "--split", "all", "--iw-samples", "4", "--particles", "50")
    assert code == 0, err
    assert all(np.isfinite(ev[k]) for k in ("neg_elbo_per_step", "nll_iw_per_step", "nll_pf_per_step"))
    assert ev["nll_iw_per_step"] <= ev["neg_elbo_per_step"] + 1e-6  # the IW bound at K = 4 is no looser
    code, out, err = run(capsys, "plan", tmp_path / "run", "--env", "Pendulum-v1", "--episodes", "1",
                         "--max-steps", "4", "--horizon", "3", "--num-samples", "10", "--iterations", "1",
                         "--history", "4", "--no-baselines")
    assert code == 0, err
    assert len(out["returns"]) == 1 and np.isfinite(out["mean_return"])


@pytest.mark.parametrize("args, message", [
    (["--model", "vrnn", "--kl-balance", "0.8"], "--kl-balance"),
    (["--model", "rssm", "--kl-balance", "1.0"], "--kl-balance"),
    (["--model", "storn", "--guide", "resq"], "not a guide of storn"),
    (["--model", "kvae", "--kvae-components", "0"], "--kvae-components = 0: expected >= 1"),
    (["--model", "dsae", "--v-dim", "-1"], "--v-dim = -1: expected >= 0"),
])
def test_bad_flags_give_one_line(capsys, tmp_path, args, message):
    code, _, err = run(capsys, "train", *TINY, *args, "--out", tmp_path / "run")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "run" / "config.json")
