"""`dvae train` with --beta, the logged diagnostics and the collapse warning, --bidirectional and
--condition, end to end on tiny data."""

import json

import numpy as np
import pytest

from tests.conftest import run_cli as run

TINY = ["--z-dim", "2", "--rnn-dim", "8", "--transition-dim", "8", "--emission-dim", "8", "--batch-size", "4",
        "--seed", "0", "--no-progress", "--patience", "0"]


@pytest.fixture(scope="module")
def levels(tmp_path_factory):
    """Sequences that are each a constant level plus small noise, with a label (the level's sign)."""
    g = np.random.default_rng(0)
    level = 3 * g.standard_normal((20, 1, 2))
    obs = (level + 0.1 * g.standard_normal((20, 7, 2))).astype(np.float32)
    path = tmp_path_factory.mktemp("data") / "levels.npz"
    np.savez(path, obs=obs, labels=(level[:, 0, 0] > 0).astype(np.int64))
    return path


def rows(run_dir):
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def test_a_huge_beta_collapses_the_posterior_and_the_cli_says_so_once(capsys, tmp_path, levels):
    code, summary, err = run(capsys, "train", "--model", "vrae", "--data", levels, *TINY, "--epochs", "5",
                             "--lr", "0.03", "--anneal-epochs", "0", "--beta", "1000", "--collapse-epochs", "2",
                             "--out", tmp_path / "run")
    assert code == 0, err
    assert err.count("dvae train: warning: posterior collapse") == 1 and "Warning:" not in err
    r = rows(tmp_path / "run")
    assert r[-1]["posterior_collapse"] and r[-1]["active_units"] == 0
    config = json.load(open(tmp_path / "run" / "config.json"))
    assert config["train"]["beta"] == 1000 and config["train"]["collapse_epochs"] == 2


def test_metrics_hold_both_terms_the_kl_per_dim_and_active_units(capsys, tmp_path, levels):
    code, _, err = run(capsys, "train", "--model", "vrae", "--data", levels, *TINY, "--epochs", "2",
                       "--out", tmp_path / "run")
    assert code == 0, err
    assert "posterior collapse" not in err
    for r in rows(tmp_path / "run"):
        assert {"train_recon_per_step", "train_kl_per_step", "valid_recon_per_step", "valid_kl_per_step",
                "valid_kl_per_dim", "active_units", "posterior_collapse"} <= set(r)
        assert len(r["valid_kl_per_dim"]) == 2 and 0 <= r["active_units"] <= 2
        assert r["valid_neg_elbo_per_step"] == pytest.approx(r["valid_recon_per_step"] + r["valid_kl_per_step"])


@pytest.mark.parametrize("family", ["dmm", "vrae"])
def test_bidirectional_and_conditional_runs_train_eval_and_score(capsys, tmp_path, levels, family):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--model", family, "--data", levels, *TINY, "--epochs", "1",
                       "--bidirectional", "--condition", "--out", out)
    assert code == 0, err
    model = json.load(open(out / "config.json"))["model"]
    assert model["bidirectional"] is True and model["c_dim"] == 2
    code, ev, err = run(capsys, "eval", out, "--split", "all", "--context", "3", "--horizon", "2")
    assert code == 0, err
    assert np.isfinite(ev["neg_elbo_per_step"]) and len(ev["kstep_rmse"]) == 2
    code, sc, err = run(capsys, "score", out, "--split", "all")
    assert code == 0, err
    assert len(sc["sequences"]) == 20


def test_condition_without_conditions_in_the_data_is_an_error(capsys, tmp_path):
    np.savez(tmp_path / "plain.npz", obs=np.zeros((4, 5, 1), np.float32))
    code, _, err = run(capsys, "train", "--model", "vrae", "--data", tmp_path / "plain.npz", *TINY, "--epochs", "1",
                       "--condition", "--out", tmp_path / "run")
    assert code != 0 and "plain.npz: --condition needs" in err
    code, _, err = run(capsys, "train", "--model", "vrnn", "--data", tmp_path / "plain.npz", *TINY, "--epochs", "1",
                       "--bidirectional", "--out", tmp_path / "run2")
    assert code != 0 and "dmm and vrae" in err and not (tmp_path / "run2").exists()
