"""Text runs (train, per-token eval, generate decoded to tokens) and missing data (train/eval/score/impute)
through the command line."""

import json
import math

import numpy as np
import pytest

from tests.conftest import run_cli as run
from dvae.data.toy_grammar import CORPUS

SMALL = ["--z-dim", "4", "--rnn-dim", "32", "--transition-dim", "32", "--emission-dim", "32", "--seed", "0",
         "--no-progress"]


def test_vrnn_learns_the_corpus_well_below_log_v_and_generates_tokens(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--model", "vrnn", "--data", CORPUS, "--epochs", "4", "--batch-size", "32",
                       *SMALL, "--out", tmp_path / "run")
    assert code == 0, err
    config = json.load(open(tmp_path / "run" / "config.json"))
    assert config["kind"] == "categorical" and config["model"]["likelihood"] == "categorical"
    vocab = config["vocab"]
    assert vocab[:2] == ["<unk>", "<eos>"] and len(vocab) == config["model"]["x_dim"] == 49
    code, ev, err = run(capsys, "eval", tmp_path / "run", "--iw-samples", "4")
    assert code == 0, err
    assert ev["vocab_size"] == 49 and ev["log_vocab_size"] == pytest.approx(math.log(49))
    assert ev["num_steps"] == sum(len(line.split()) + 1 for line in _test_lines())  # tokens + <eos>
    # a uniform guess costs log V = 3.89 nats per token; the grammar's own entropy is 1.63 (docs)
    assert ev["neg_elbo_per_step"] < 0.6 * math.log(49), ev
    assert ev["nll_iw_per_step"] <= ev["neg_elbo_per_step"] + 0.05
    code, gen, err = run(capsys, "generate", tmp_path / "run", "--num-samples", "5", "--steps", "16", "--seed", "1")
    assert code == 0, err
    assert len(gen["sequences"]) == 5 and all(tok in vocab[2:] or tok == "<unk>" for s in gen["sequences"] for tok in s)
    assert gen["texts"][0] == " ".join(gen["sequences"][0])


def _test_lines():
    from dvae.data import split_indices

    lines = [line for line in open(CORPUS).read().split("\n") if line.strip()]
    return [lines[i] for i in split_indices(len(lines))["test"]]


@pytest.mark.parametrize("family", ["vrae", "dmm"])
def test_other_families_train_on_text_and_decode_their_samples(capsys, tmp_path, family):
    lines = open(CORPUS).read().split("\n")[:120]
    path = tmp_path / "small.txt"
    path.write_text("\n".join(lines) + "\n")
    code, _, err = run(capsys, "train", "--model", family, "--data", path, "--epochs", "1", *SMALL, "--out", tmp_path / "r")
    assert code == 0, err
    code, gen, err = run(capsys, "generate", tmp_path / "r", "--num-samples", "2", "--steps", "5")
    assert code == 0, err
    assert len(gen["sequences"]) == 2 and all(len(s) <= 5 for s in gen["sequences"])


@pytest.fixture(scope="module")
def gappy(tmp_path_factory):
    """A trajectory .npz with about 15% of its observation entries NaN."""
    d = tmp_path_factory.mktemp("missing")
    g = np.random.default_rng(0)
    obs = np.cumsum(g.standard_normal((12, 11, 2)), axis=1)
    obs[g.random(obs.shape) < 0.15] = np.nan
    np.savez(d / "gappy.npz", obs=obs, actions=g.standard_normal((12, 10, 1)))
    return d / "gappy.npz"


def test_missing_data_trains_evaluates_scores_and_imputes(capsys, tmp_path, gappy):
    code, _, err = run(capsys, "train", "--data", gappy, "--epochs", "1", *SMALL, "--out", tmp_path / "bad")
    assert code == 2 and "a NaN is a missing entry only with --missing nan" in err
    code, _, err = run(capsys, "train", "--data", gappy, "--missing", "nan", "--epochs", "2", *SMALL,
                       "--out", tmp_path / "run")
    assert code == 0, err
    assert json.load(open(tmp_path / "run" / "config.json"))["model"]["missing"] is True
    code, ev, err = run(capsys, "eval", tmp_path / "run", "--split", "all")  # NaN read as the run was trained
    assert code == 0, err
    obs = np.load(gappy)["obs"]
    assert ev["num_missing_entries"] == np.isnan(obs).sum() and np.isfinite(ev["neg_elbo_per_step"])
    code, _, err = run(capsys, "eval", tmp_path / "run", "--missing", "none")
    assert code == 2 and "missing entry only with --missing nan" in err
    code, sc, err = run(capsys, "score", tmp_path / "run", "--split", "all")
    assert code == 0, err
    assert len(sc["sequences"]) == 12 and all(np.isfinite(s["neg_elbo"]) for s in sc["sequences"])
    code, out, err = run(capsys, "impute", tmp_path / "run", "--data", gappy, "--out", tmp_path / "filled.npz",
                         "--num-samples", "20")
    assert code == 0, err
    f = np.load(tmp_path / "filled.npz")
    hole = np.isnan(obs)
    assert out["num_missing_entries"] == hole.sum() and (f["missing"] == hole).all()
    assert np.isfinite(f["obs"]).all() and (f["obs"][~hole] == obs[~hole].astype(np.float32)).all()
    assert (f["obs"][hole] == f["obs_mean"][hole]).all() and (f["obs_lo"] <= f["obs_hi"]).all()
    assert f["actions"].shape == (12, 10, 1)


def test_generate_prints_sampled_arrays_for_continuous_runs(capsys, tmp_path, gappy):
    g = np.random.default_rng(1)
    path = tmp_path / "plain.npz"
    np.savez(path, obs=g.standard_normal((6, 9, 3)))
    assert run(capsys, "train", "--data", path, "--model", "lgssm", "--epochs", "1", *SMALL, "--out", tmp_path / "r")[0] == 0
    code, gen, err = run(capsys, "generate", tmp_path / "r", "--num-samples", "3", "--steps", "7")
    assert code == 0, err
    assert np.array(gen["x"]).shape == (3, 7, 3) and np.array(gen["x_mean"]).shape == (3, 7, 3)
