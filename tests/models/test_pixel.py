"""The pixel DMM: conv encoder and emitter, frame data through the loader and the command line."""

import json

import numpy as np
import pytest
import torch

from dvae.cli import main
from dvae.data import collate
from dvae.data.datasets import from_trajectories, load_npz
from dvae.errors import DataError
from dvae.eval.openloop import bernoulli_nll
from dvae.infer import DynamicalELBO
from dvae.models import ModelConfig, build_model
from dvae.nn import ConvEmitter, FrameEncoder
from envs import collect, save_npz
from tests.infer.test_vectorized import TIGHT, assert_same_grads, loss_and_grads


def pixel_dmm(u_dim=1, guide="dks", dtype=torch.float64):
    c = ModelConfig("dmm", x_dim=16 * 12, u_dim=u_dim, z_dim=3, rnn_dim=8, transition_dim=8, emission_dim=8,
                    guide=guide, likelihood="bernoulli", frame_shape=[16, 12])
    return build_model(c).to(dtype)


def frames_batch(u_dim=1, lengths=(5, 3), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [(torch.rand(n, 16 * 12, generator=g) > 0.7).to(dtype) for n in lengths]
    us = None if not u_dim else [torch.randn(n, u_dim, generator=g, dtype=dtype) for n in lengths]
    return collate(xs, us)


def test_conv_nets_shapes_and_leading_dims():
    torch.manual_seed(0)
    enc, emit = FrameEncoder([16, 12], 5), ConvEmitter(3, [16, 12], 7)
    x = torch.rand(2, 4, 16 * 12)  # (B, T, H*W)
    assert enc(x).shape == (2, 4, 5)
    (logits,) = emit(torch.randn(2, 4, 3))
    assert logits.shape == (2, 4, 16 * 12)
    loc, scale = ConvEmitter(3, [8, 8], 7, likelihood="gaussian")(torch.randn(6, 3))
    assert loc.shape == scale.shape == (6, 64) and (scale > 0).all()
    # frame by frame = all at once (the reshape keeps frames apart)
    torch.testing.assert_close(enc(x)[1, 2], enc(x[1, 2][None])[0])
    for bad in ([10, 12], [4, 4]):
        with pytest.raises(ValueError, match="frame_shape"):
            FrameEncoder(bad, 5)
    with pytest.raises(ValueError, match="does not match x_dim"):
        build_model(ModelConfig("dmm", x_dim=100, frame_shape=[16, 12], likelihood="bernoulli"))


@pytest.mark.parametrize("u_dim", [0, 1])
@pytest.mark.parametrize("guide", ["dks", "mean_field"])
def test_pixel_dmm_both_forms_same_elbo_and_gradients(u_dim, guide):
    m = pixel_dmm(u_dim, guide)
    batch = frames_batch(u_dim)
    elbo = DynamicalELBO()
    per_step = loss_and_grads(m, m.model, m.guide, batch, elbo)
    vectorized = loss_and_grads(m, *m.programs(vectorized=True), batch, elbo)
    torch.testing.assert_close(vectorized[0], per_step[0], **TIGHT)
    assert_same_grads(vectorized[1], per_step[1], **TIGHT)
    assert m.frame_encoder.fc.weight.grad is not None  # the guide reads frames through the conv net


def test_pixel_dmm_predict_and_generate_shapes():
    m = pixel_dmm().float()
    batch = frames_batch(dtype=torch.float32)
    out = m.predict(batch, torch.zeros(2, 4, 1), 4, num_samples=3)
    assert out["x_mean"].shape == (3, 2, 4, 192) and ((out["x_mean"] > 0) & (out["x_mean"] < 1)).all()
    assert set(np.unique(out["x"].numpy())) <= {0.0, 1.0}
    assert m.generate(5, u=torch.zeros(5, 1), num_samples=2)["x"].shape == (2, 5, 192)


def test_frames_are_flattened_binarized_and_checked(tmp_path):
    rng = np.random.default_rng(0)
    obs = rng.uniform(size=(4, 6, 8, 8)).astype(np.float32)  # (N, T+1, H, W)
    d = from_trajectories(obs, rng.normal(size=(4, 5, 1)).astype(np.float32))
    assert d.kind == "binary" and d.meta["frame_shape"] == [8, 8] and d.x_dim == 64
    np.testing.assert_array_equal(d.xs[2], (obs[2].reshape(6, 64) > 0.5).astype(np.float32))
    as_uint8 = from_trajectories(np.round(obs * 255).astype(np.uint8))
    np.testing.assert_array_equal(as_uint8.xs[1], (np.round(obs[1] * 255).reshape(6, 64) > 127.5).astype(np.float32))
    bad = obs.copy()
    bad[3, 4, 2, 5] = 1.5
    with pytest.raises(DataError, match=r"f.npz: obs has 1.5 outside \[0, 1\] in a frame at sequence 3, step 4, pixel 21"):
        from_trajectories(bad, path="f.npz")
    with pytest.raises(DataError, match="multiples of 4"):
        from_trajectories(rng.uniform(size=(2, 3, 6, 8)))


def test_collect_marks_frames_and_the_loader_reads_them(tmp_path):
    d = collect("dvae/PixelPendulum-v0", episodes=3, steps=4, policy="ou", seed=1)
    assert d["obs"].shape == (3, 5, 1024) and d["frame_shape"].tolist() == [32, 32]
    assert "frame_shape" not in collect("Pendulum-v1", episodes=2, steps=3, seed=1)
    save_npz(tmp_path / "pix.npz", d)
    data = load_npz(str(tmp_path / "pix.npz"))
    assert data.kind == "binary" and data.meta["frame_shape"] == [32, 32]
    np.testing.assert_array_equal(data.xs[0], (d["obs"][0] > 0.5).astype(np.float32))


def test_bernoulli_nll_by_hand():
    truth = np.array([[[1.0, 0.0, 1.0]]])  # (B=1, H=1, x_dim=3)
    prob = np.array([[[0.8, 0.3, 0.5]]])
    expected = -(np.log(0.8) + np.log(0.7) + np.log(0.5))
    assert bernoulli_nll(truth, prob)[0, 0] == pytest.approx(expected, rel=1e-12)


def test_pixel_pipeline_end_to_end(tmp_path, capsys):
    data = tmp_path / "pix.npz"
    assert main(["collect", "--env", "dvae/PixelPendulum-v0", "--episodes", "10", "--steps", "12", "--policy", "ou",
                 "--seed", "0", "--out", str(data)]) == 0
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--epochs", "1", "--z-dim", "3", "--rnn-dim", "8", "--transition-dim",
                 "8", "--emission-dim", "8", "--no-progress", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["frame_shape"] == [32, 32] and config["model"]["likelihood"] == "bernoulli"
    assert (run / "reconstruction.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "all", "--context", "4", "--horizon", "5", "--num-samples", "4",
                 "--plots", str(tmp_path / "plots")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["kstep_rmse"]) == 5 and len(out["baselines"]["linear"]["kstep_rmse"]) == 5
    assert 0 < out["kstep_nll"][0] < 1024 * np.log(1e6)
    frames = [p for p in out["plots"] if "frames_" in p]
    assert frames and all((tmp_path / "plots" / p.split("/")[-1]).stat().st_size > 0 for p in frames)


def test_frame_shape_goes_to_the_families_that_read_frames():
    """``dvae train`` on frames gives ``frame_shape`` to a family whose class states ``frames`` (the conv
    nets), and none to the others (they read frames as flat vectors)."""
    from types import SimpleNamespace

    from dvae.models import MODELS
    from dvae.run_start import train_configs
    from dvae.train_options import train_options

    data = SimpleNamespace(kind="binary", x_dim=64, u_dim=0, c_dim=0, meta={"frame_shape": [8, 8]})
    assert MODELS["dmm"].frames and not MODELS["vrnn"].frames
    for name, cls in MODELS.items():
        model, _ = train_configs(train_options(model=name), data)
        assert model.frame_shape == ([8, 8] if cls.frames else None), name
