"""`dvae train --guide ltr|iaf` end to end on tiny data, and the new flags' bad input."""

import json
import os

import numpy as np
import pytest

from tests.cli.test_cli import TINY, run, traj  # noqa: F401 (traj: the module's fixture)


@pytest.mark.parametrize("guide, extra", [("ltr", []), ("iaf", ["--num-iafs", "2", "--iaf-dim", "6"]), ("iaf", [])])
def test_train_eval_with_the_new_guides(capsys, tmp_path, traj, guide, extra):  # noqa: F811
    code, summary, err = run(capsys, "train", "--data", traj, *TINY, "--guide", guide, *extra, "--no-plots",
                             "--out", tmp_path / "run")
    assert code == 0, err
    assert summary["plots"] == [] and not any(f.endswith(".png") for f in os.listdir(tmp_path / "run"))
    cfg = json.loads(open(tmp_path / "run" / "config.json").read())["model"]
    assert cfg["guide"] == guide
    assert cfg["num_iafs"] == ((2 if extra else 1) if guide == "iaf" else 0)
    row = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert np.isfinite(row["valid_neg_elbo_per_step"]) and np.isfinite(row["train_loss"])
    code, ev, err = run(capsys, "eval", tmp_path / "run", "--split", "all", "--iw-samples", "3")
    assert code == 0, err
    assert np.isfinite(ev["neg_elbo_per_step"]) and np.isfinite(ev["nll_iw_per_step"])


@pytest.mark.parametrize("args, message", [
    (["--guide", "ltr", "--bidirectional"], "no --bidirectional"),
    (["--guide", "dks", "--num-iafs", "2"], "--num-iafs"),
    (["--guide", "iaf", "--num-iafs", "0"], "--num-iafs"),
    (["--guide", "iaf", "--iaf-dim", "0"], "--iaf-dim"),
    (["--model", "vrnn", "--guide", "iaf"], "DMM guide"),
])
def test_bad_guide_flags_give_one_line(capsys, tmp_path, traj, args, message):  # noqa: F811
    code, _, err = run(capsys, "train", "--data", traj, *TINY, *args, "--out", tmp_path / "run")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "run" / "config.json")


@pytest.mark.parametrize("args, bidirectional, encoder_width", [
    ([], True, 2 * 8),                                        # the DMM's default: forward and backward RNNs
    (["--no-bidirectional"], False, 8),                       # the backward RNN alone (Pyro's DMM example)
    (["--guide", "ltr"], False, 8),                           # the filter: a forward RNN, never bidirectional
    (["--guide", "mean_field"], True, 2 * 8),
    (["--model", "vrae"], False, None),                       # the VRAE's default: a forward RNN
    (["--model", "vrnn"], False, None),                       # no bidirectional encoder at all
])
def test_the_family_default_of_bidirectional_is_written_out_in_config_json(capsys, tmp_path, traj, args, bidirectional,
                                                                           encoder_width):  # noqa: F811
    """`--bidirectional` unset is the family's default, resolved when the run starts: config.json says which
    (so a run reloads the same networks whatever later defaults become), and the model has those networks."""
    import dvae

    code, _, err = run(capsys, "train", "--data", traj, *TINY, "--rnn-dim", "8", *args, "--no-plots",
                       "--out", tmp_path / "run")
    assert code == 0, err
    cfg = json.loads(open(tmp_path / "run" / "config.json").read())["model"]
    assert cfg["bidirectional"] is bidirectional
    model = dvae.load(tmp_path / "run").model
    if encoder_width is not None:
        assert model.encoder.out_dim == encoder_width and (model.encoder.rnn_back is not None) == bidirectional

