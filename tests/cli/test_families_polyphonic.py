"""Issue 17's "done when": every family trains (`dvae train --model F`) and evaluates (`dvae eval`, ELBO and IW
bound) on a polyphonic pickle (88-key binary piano rolls, Bernoulli emissions). The control-trajectory cycle of
each family is in test_new_families_cli.py and test_cli.py."""

import json
import pickle

import numpy as np
import pytest

from dvae.models import MODELS
from tests.conftest import run_cli as run

TINY = ["--epochs", "1", "--z-dim", "2", "--rnn-dim", "8", "--transition-dim", "8", "--emission-dim", "8",
        "--batch-size", "4", "--seed", "0", "--no-progress", "--no-plots"]


@pytest.fixture(scope="module")
def pickle_path(tmp_path_factory):
    """A Boulanger-Lewandowski-layout pickle: 6/2/2 sequences of 5-9 steps, each step a tuple of MIDI notes."""
    rng = np.random.default_rng(0)

    def seq():
        return [tuple(int(n) for n in rng.choice(np.arange(21, 109), size=rng.integers(0, 4), replace=False))
                for _ in range(int(rng.integers(5, 10)))]

    path = tmp_path_factory.mktemp("poly") / "tiny.pkl"
    path.write_bytes(pickle.dumps({"train": [seq() for _ in range(6)], "valid": [seq() for _ in range(2)],
                                   "test": [seq() for _ in range(2)]}))
    return path


@pytest.mark.parametrize("family", sorted(set(MODELS) - {"lgssm"}))  # the LGSSM is linear-Gaussian: no Bernoulli
def test_every_family_trains_and_evaluates_on_piano_rolls(capsys, tmp_path, pickle_path, family):
    code, _, err = run(capsys, "train", "--model", family, "--data", pickle_path, *TINY, "--out", tmp_path / "run")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["model"] == family
    code, ev, err = run(capsys, "eval", tmp_path / "run", "--iw-samples", "3")
    assert code == 0, err
    assert np.isfinite(ev["neg_elbo_per_step"]) and np.isfinite(ev["nll_iw_per_step"])
    assert ev["neg_elbo_per_step"] > 0  # Bernoulli: -log p of binary data is positive, so is the bound
    assert ev["nll_iw_per_step"] > 0  # (each is one Monte Carlo draw: on two test sequences their order is noise)
