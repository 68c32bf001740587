"""Latent-space tools: PCA against numpy's SVD, interpolation paths, decoding against the decoder run
by hand, and `dvae latent` end to end."""

import json
import os
import sys

import numpy as np
import pytest
import torch

from dvae.cli import main
from dvae.data import collate
from dvae.eval.latent import (decode_codes, lerp, pca, pendulum_energy, sequence_codes, slerp, traverse, tsne)
from dvae.models import ModelConfig, build_model
from tests.conftest import write_random_walks


def tiny(family, u_dim=2):
    return build_model(ModelConfig(family, x_dim=3, u_dim=u_dim, z_dim=4, rnn_dim=8, transition_dim=8, emission_dim=8))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pca_matches_numpy_svd(k):
    g = np.random.default_rng(0)
    x = g.standard_normal((40, 5)) @ g.standard_normal((5, 5)) + 3.0  # correlated, off-centre
    got = pca(x, k)
    centred = x - x.mean(0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    signs = np.sign((got.components * vt[:k]).sum(1))  # components are defined up to sign
    assert np.all(np.abs(signs) == 1)
    np.testing.assert_allclose(got.components, signs[:, None] * vt[:k], atol=1e-10)
    np.testing.assert_allclose(got.scores, (u[:, :k] * s[:k]) * signs, atol=1e-9)
    np.testing.assert_allclose(got.explained_variance, s[:k] ** 2 / (len(x) - 1), rtol=1e-10)
    np.testing.assert_allclose(got.ratio, s[:k] ** 2 / (s ** 2).sum(), rtol=1e-10)
    assert np.all(np.abs(got.components).argmax(1) == np.argmax(got.components, 1))  # the sign convention


def test_lerp_and_slerp_run_from_one_code_to_the_other():
    g = np.random.default_rng(1)
    z0, z1 = g.standard_normal(6), g.standard_normal(6)
    for fn in (lerp, slerp):
        p = fn(z0, z1, 9)
        assert p.shape == (9, 6)
        np.testing.assert_allclose(p[0], z0, atol=1e-12)
        np.testing.assert_allclose(p[-1], z1, atol=1e-12)
    np.testing.assert_allclose(lerp(z0, z1, 3)[1], (z0 + z1) / 2, atol=1e-12)


def test_slerp_between_unit_vectors_stays_on_the_sphere_at_even_angles():
    g = np.random.default_rng(2)
    z0, z1 = g.standard_normal(5), g.standard_normal(5)
    z0, z1 = z0 / np.linalg.norm(z0), z1 / np.linalg.norm(z1)
    p = slerp(z0, z1, 11)
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-12)
    omega = np.arccos(z0 @ z1)
    angles = np.arccos(np.clip(p @ z0, -1, 1))  # the angle to z0 grows linearly
    np.testing.assert_allclose(angles, np.linspace(0, omega, 11), atol=1e-7)
    steps = np.arccos(np.clip((p[1:] * p[:-1]).sum(1), -1, 1))
    np.testing.assert_allclose(steps, omega / 10, atol=1e-7)
    assert np.all(np.linalg.norm(lerp(z0, z1, 11)[1:-1], axis=1) < 1)  # the chord cuts inside: not a sphere path


def test_slerp_of_parallel_codes_is_the_straight_line():
    z0 = np.array([1.0, 2.0, -1.0])
    np.testing.assert_allclose(slerp(z0, 3 * z0, 5), lerp(z0, 3 * z0, 5), atol=1e-12)
    np.testing.assert_allclose(slerp(np.zeros(3), z0, 4), lerp(np.zeros(3), z0, 4), atol=1e-12)


def test_traverse_changes_only_the_chosen_dimension():
    z = np.array([0.5, -1.0, 2.0])
    out = traverse(z, 1, [-2.0, 0.0, 2.0])
    assert out.shape == (3, 3)
    np.testing.assert_array_equal(out[:, 1], [-2.0, 0.0, 2.0])
    np.testing.assert_array_equal(out[:, [0, 2]], np.repeat(z[None, [0, 2]], 3, 0))


@pytest.mark.parametrize("u_dim", [0, 2])
def test_decoded_codes_are_the_decoder_run_by_hand(u_dim):
    m = tiny("vrae", u_dim)
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(5, 4, generator=g)
    T = 6
    u = torch.randn(T, u_dim, generator=g) if u_dim else None
    got = decode_codes(m, codes.numpy(), T, None if u is None else u.numpy())
    assert got.shape == (5, T, 3)
    batch = collate([torch.zeros(T, 3)] * 5, None if u is None else [u] * 5)
    with torch.no_grad():  # s_0 = tanh(W z), s_t = RNN(u_{t-1}, s_{t-1}), mean of p(x_t | s_t)
        expected = m.emitter(m.decoder_states(batch, codes))[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6, atol=1e-6)


def test_decoding_needs_one_code_per_sequence():
    with pytest.raises(ValueError, match="one latent code per sequence"):
        decode_codes(tiny("dmm"), np.zeros((2, 4)), 5, np.zeros((5, 2)))


def test_sequence_codes_are_posterior_means():
    m = tiny("vrae")
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(L, 3, generator=g).numpy() for L in (5, 3, 7)]
    us = [torch.randn(L, 2, generator=g).numpy() for L in (5, 3, 7)]
    codes = sequence_codes(m, xs, us, batch_size=2)
    with torch.no_grad():
        loc = m.posterior_params(collate([torch.from_numpy(x) for x in xs], [torch.from_numpy(u) for u in us]))[0]
    np.testing.assert_allclose(codes, loc.numpy(), rtol=1e-5, atol=1e-6)
    lg = build_model(ModelConfig("lgssm", x_dim=3, u_dim=2, z_dim=2))  # a latent per step, mean in closed form
    codes = sequence_codes(lg, xs, us, batch_size=3)
    alone = sequence_codes(lg, xs[1:2], us[1:2])  # padding beside longer sequences changes nothing
    assert codes.shape == (3, 2)
    np.testing.assert_allclose(codes[1], alone[0], rtol=1e-4, atol=1e-5)


def test_pendulum_energy_by_hand():
    upright_still = np.array([[1.0, 0.0, 0.0]] * 3)  # theta = 0 (up), at rest: 5 cos 0 = 5
    down_swinging = np.array([[-1.0, 0.0, np.sqrt(6.0)], [-1.0, 0.0, -np.sqrt(6.0)]])  # -5 + 6 / 6 = -4
    np.testing.assert_allclose(pendulum_energy([upright_still, down_swinging]), [5.0, -4.0])


def test_tsne_embeds_when_scikit_learn_is_there_and_returns_none_when_not(monkeypatch):
    x = np.random.default_rng(0).standard_normal((20, 4))
    pytest.importorskip("sklearn")
    emb = tsne(x, seed=0)
    assert emb.shape == (20, 2) and np.isfinite(emb).all()
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # import fails as if not installed
    assert tsne(x, seed=0) is None


TINY = ["--epochs", "1", "--z-dim", "3", "--rnn-dim", "8", "--transition-dim", "8", "--emission-dim", "8",
        "--batch-size", "8", "--seed", "0", "--no-progress"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return write_random_walks(tmp_path_factory.mktemp("latent"), episodes=14, labels=np.arange(14) % 3)


def _run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_dvae_latent_writes_the_maps_interpolations_and_traversal(capsys, tmp_path, labelled, monkeypatch):
    assert _run(capsys, "train", "--model", "vrae", "--data", labelled, *TINY, "--out", tmp_path / "vrae")[0] == 0
    code, out, err = _run(capsys, "latent", tmp_path / "vrae", "--split", "all", "--out", tmp_path / "png",
                          "--num-points", "4", "--dim", "1")
    assert code == 0, err
    assert out["num_sequences"] == 14 and out["label"] == "labels" and out["z_dim"] == 3
    names = {os.path.basename(p) for p in out["plots"]}
    assert {"latent_pca.png", "latent_interpolation.png", "latent_traversal.png"} <= names
    assert all(os.path.getsize(p) > 5000 for p in out["plots"])
    assert out["interpolation"]["labels"] == [0.0, 2.0] and out["traversal"]["dim"] == 1
    assert len(out["traversal"]["values"]) == 4
    assert (out["tsne"] == "done") == ("latent_tsne.png" in names)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # without scikit-learn: skipped, said so
    code, out, err = _run(capsys, "latent", tmp_path / "vrae", "--split", "all", "--out", tmp_path / "png2")
    assert code == 0, err
    assert out["tsne"].startswith("skipped: scikit-learn") and not os.path.exists(tmp_path / "png2" / "latent_tsne.png")
    code, _, err = _run(capsys, "latent", tmp_path / "vrae", "--split", "all", "--label", "nope")
    assert code != 0 and "nope" in err


def test_dvae_latent_on_a_model_with_a_latent_per_step_maps_the_codes_only(capsys, tmp_path, labelled):
    assert _run(capsys, "train", "--model", "vae", "--data", labelled, *TINY, "--out", tmp_path / "vae")[0] == 0
    code, out, err = _run(capsys, "latent", tmp_path / "vae", "--split", "all", "--no-tsne", "--label", "index")
    assert code == 0, err
    assert [os.path.basename(p) for p in out["plots"]] == ["latent_pca.png"]
    assert out["interpolation"].startswith("skipped") and out["tsne"] == "skipped: --no-tsne"
