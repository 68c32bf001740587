import numpy as np

from dvae.eval.plots import plot_kstep_errors, plot_predictions, plot_reconstructions, plot_training_curves


def _ok(p):
    assert p.exists() and p.stat().st_size > 1000
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_curves(tmp_path):
    rows = [{"epoch": e, "train_loss": 10.0 / (e + 1), "valid_neg_elbo_per_step": 5.0 / (e + 1),
             "kl_per_step": 0.1 * e, "recon_per_step": 4.0 / (e + 1)} for e in range(5)]
    rows.append({"epoch": 5, "train_loss": 1.0, "valid_neg_elbo_per_step": 0.8})
    p = tmp_path / "curves.png"
    plot_training_curves(rows, p)
    _ok(p)


def test_reconstructions(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(40, 8))
    mean = truth + 0.1 * rng.normal(size=truth.shape)
    p = tmp_path / "recon.png"
    plot_reconstructions(truth, mean, mean - 0.3, mean + 0.3, p, dim_names=[f"d{i}" for i in range(8)])
    _ok(p)
    roll = (rng.random((50, 20)) < 0.2).astype(float)
    pb = tmp_path / "roll.png"
    plot_reconstructions(roll, rng.random((50, 20)), None, None, pb, binary=True)
    _ok(pb)


def test_predictions_and_kstep(tmp_path):
    rng = np.random.default_rng(1)
    truth = np.cumsum(rng.normal(size=(30, 2)), axis=0)
    C, H = 20, 10
    mean = np.repeat(truth[C - 1:C], H, axis=0)
    p = tmp_path / "pred.png"
    plot_predictions(truth, C, mean, mean - 1, mean + 1, p, baselines={"persistence": mean, "arx": mean + 0.5})
    _ok(p)
    pk = tmp_path / "kstep.png"
    plot_kstep_errors({"model": [0.1, 0.2, 0.3], "persistence": [0.2, 0.4, 0.5]}, pk)
    _ok(pk)
