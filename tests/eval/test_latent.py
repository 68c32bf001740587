"""Latent-space tools: PCA against numpy's SVD, interpolation paths, decoding against the decoder run
by hand (the VRAE's code z; the DSAE's static code v with its dynamic z_t drawn once and shared), and
`dvae latent` end to end."""

import json
import os
import sys

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from dvae.cli import main
from dvae.data import collate
from dvae.eval.latent import (code_name, decode_codes, decode_problem, lerp, pca, pendulum_energy, sequence_codes,
                              slerp, traverse, tsne)
from dvae.models import ModelConfig, build_model
from dvae.models.base import repeat_batch
from tests.conftest import write_random_walks


def tiny(family, u_dim=2, **kw):
    return build_model(ModelConfig(family, x_dim=3, u_dim=u_dim, z_dim=4, rnn_dim=8, transition_dim=8, emission_dim=8,
                                   **kw))


V_DIM = 2  # the DSAE's static code, not z_dim (4)


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
    assert decode_problem(tiny("dmm")).endswith("dmm has a latent per time step")
    assert decode_problem(tiny("vrae")) is None and decode_problem(tiny("dsae", v_dim=V_DIM)) is None
    assert [code_name(tiny(f, v_dim=V_DIM)) for f in ("vrae", "dsae", "dmm")] == [
        "z (per sequence)", "v (per sequence)", "mean over steps of z_t"]


def _walks(seed):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(L, 3, generator=g).numpy() for L in (5, 3, 7)]
    us = [torch.randn(L, 2, generator=g).numpy() for L in (5, 3, 7)]
    return xs, us


def test_dsae_codes_are_the_posterior_mean_of_its_static_code_v():
    m = tiny("dsae", v_dim=V_DIM)
    xs, us = _walks(4)
    codes = sequence_codes(m, xs, us, batch_size=2)
    assert codes.shape == (3, V_DIM)  # v, not the z_t (z_dim 4)
    batch = collate([torch.from_numpy(x) for x in xs], [torch.from_numpy(u) for u in us])
    S = 4000  # the guide's own draws of its site "v": their mean is the code, within 5 standard errors
    pyro.set_rng_seed(0)
    with torch.no_grad():
        v = poutine.trace(m.guide).get_trace(repeat_batch(batch, S)).nodes["v"]["value"].reshape(S, 3, V_DIM)
    assert np.all(np.abs(v.mean(0).numpy() - codes) < 5 * v.std(0).numpy() / np.sqrt(S))
    alone = sequence_codes(m, xs[1:2], us[1:2])  # padding beside longer sequences changes nothing
    np.testing.assert_allclose(codes[1], alone[0], rtol=1e-5, atol=1e-6)

    class DrawnCode(type(m)):  # the same model, its q(v | x) not exposed in closed form: encode's draws
        def code_posterior(self, batch):
            return None

    drawn = DrawnCode(m.config)
    drawn.load_state_dict(m.state_dict())
    pyro.set_rng_seed(1)
    np.testing.assert_allclose(sequence_codes(drawn, xs, us, num_samples=S), codes, atol=5 * v.std(0).max() / np.sqrt(S))


def test_dsae_codes_decode_with_one_draw_of_z_shared_by_every_code():
    m = tiny("dsae", v_dim=V_DIM)
    g = torch.Generator().manual_seed(5)
    T = 6
    codes = torch.randn(2, V_DIM, generator=g)  # two different v
    u = torch.randn(T, 2, generator=g)
    got = decode_codes(m, codes.numpy(), T, u.numpy(), seed=11)
    assert got.shape == (2, T, 3)
    with torch.no_grad():  # the model program by hand, on the first code from seed 11: z_t ~ p(z_t | z_{<t}, u)
        torch.manual_seed(11)  # (which does not read v), x_t drawn as the unconditioned program draws it
        state, p_z = m.start(codes[:1])
        zs = []
        for t in range(T):
            if t:
                state, p_z = m.transition_step(state, x, u[None, t - 1])
            state = m.with_latent(state, p_z.sample())
            x = m.emission(state).sample()  # (1, 3)
            zs.append(state["z"][0])
        z = torch.stack(zs)  # (T, z_dim): the one draw
        for i in range(2):  # p(x_t | z_t, v_i): its mean, with that same z for both codes
            expected = m.emitter(torch.cat([z, codes[i].expand(T, V_DIM)], -1))[0]  # (T, 3)
            np.testing.assert_allclose(got[i], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(got[0] - got[1]).max() > 1e-3


def test_a_dsae_traversal_of_v_is_the_same_for_the_same_v_and_differs_where_v_does():
    m = tiny("dsae", v_dim=V_DIM)
    T, u = 5, np.zeros((5, 2), np.float32)
    path = traverse(np.array([0.3, -0.7]), 1, [-2.0, 0.5, 0.5, 2.0])  # rows 1 and 2: the same v
    a = decode_codes(m, path, T, u, seed=3)
    np.testing.assert_array_equal(a, decode_codes(m, path, T, u, seed=3))  # the same seed, the same draw of z
    np.testing.assert_allclose(a[1], a[2], rtol=1e-6, atol=1e-7)  # the same v, the same z: the same sequence
    assert np.abs(a[0] - a[3]).max() > 1e-3 and np.abs(a[0] - a[1]).max() > 1e-4  # v differs
    np.testing.assert_allclose(decode_codes(m, path[3:], T, u, seed=3)[0], a[3], rtol=1e-5, atol=1e-6)  # alone too
    assert np.abs(decode_codes(m, path, T, u, seed=4) - a).max() > 1e-3  # another seed, another draw of z


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
    assert out["code"] == "z (per sequence)" and out["code_dim"] == 3
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
    assert out["interpolation"].endswith("vae has a latent per time step") and out["traversal"] == out["interpolation"]
    assert out["code"] == "mean over steps of z_t" and out["code_dim"] == out["z_dim"] == 3


def test_dvae_latent_on_a_dsae_maps_and_decodes_its_static_code_v(capsys, tmp_path, labelled):
    run = tmp_path / "dsae"
    assert _run(capsys, "train", "--model", "dsae", "--v-dim", "2", "--data", labelled, *TINY, "--out", run)[0] == 0
    code, out, err = _run(capsys, "latent", run, "--split", "all", "--no-tsne", "--num-points", "3", "--dim", "1",
                          "--out", tmp_path / "png")
    assert code == 0, err
    assert out["code"] == "v (per sequence)" and out["code_dim"] == 2 and out["z_dim"] == 3
    names = [os.path.basename(p) for p in out["plots"]]
    assert names == ["latent_pca.png", "latent_interpolation.png", "latent_traversal.png"]
    assert all(os.path.getsize(p) > 5000 for p in out["plots"])
    assert out["interpolation"]["labels"] == [0.0, 2.0] and out["interpolation"]["num_points"] == 3
    assert out["traversal"]["dim"] == 1 and out["traversal"]["values"] == [-2.0, 0.0, 2.0]
