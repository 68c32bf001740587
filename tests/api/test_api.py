"""The Python API (dvae.fit, dvae.load, Run, Forecast) against the command line it mirrors."""

import json
import os

import numpy as np
import pytest
import torch

import dvae
from dvae.api import as_data
from tests.conftest import run_cli

TINY = dict(z_dim=2, rnn_dim=8, transition_dim=8, emission_dim=8, no_progress=True, device="cpu")
TINY_FLAGS = ["--z-dim", "2", "--rnn-dim", "8", "--transition-dim", "8", "--emission-dim", "8", "--no-progress",
              "--device", "cpu"]
TIMING = ("epoch_seconds",)


def _system(N=12, T=20, seed=0):
    """A controlled linear system: x (N, T+1, 2), u (N, T, 1)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(N, T, 1)).astype(np.float32)
    x = np.zeros((N, T + 1, 2), np.float32)
    x[:, 0] = rng.normal(size=(N, 2))
    for t in range(T):
        x[:, t + 1] = 0.9 * x[:, t] + 0.3 * u[:, t] + 0.05 * rng.normal(size=(N, 2))
    return x, u


def _rows(metrics):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in metrics]


@pytest.fixture(scope="module")
def arrays():
    return _system()


@pytest.fixture(scope="module")
def npz(arrays, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sys.npz"
    x, u = arrays
    np.savez(path, obs=x, actions=u)
    return str(path)


@pytest.fixture(scope="module")
def cli_run(npz, tmp_path_factory):
    """A run written by `dvae train` on the npz (2 epochs, tiny networks)."""
    from dvae.cli import main

    out = str(tmp_path_factory.mktemp("runs") / "cli")
    assert main(["train", "--data", npz, "--epochs", "2", "--seed", "3", "--out", out, *TINY_FLAGS]) == 0
    return out


# --- fit -----------------------------------------------------------------------------------------------
def test_fit_options_are_the_train_flags_with_their_defaults():
    from dvae.cli import build_parser
    from dvae.fitting import TRAIN_OPTIONS

    train = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    flags = {a.dest: a.default for a in train._actions if a.dest != "help"}
    for explicit in ("model", "data", "out", "resume", "debug"):
        flags.pop(explicit)
    assert flags == TRAIN_OPTIONS


def test_fit_unknown_option_names_it_and_the_close_matches(arrays):
    x, u = arrays
    with pytest.raises(ValueError, match=r"unknown option 'epoch'.*did you mean epochs"):
        dvae.fit(x, u, epoch=1)
    with pytest.raises(ValueError, match=r"guide = 'dsk': expected one of dks, mean_field"):
        dvae.fit(x, u, guide="dsk")
    with pytest.raises(ValueError, match=r"epochs = 1.5: expected an int"):
        dvae.fit(x, u, epochs=1.5)


def test_fit_one_seed_gives_identical_metrics_and_another_differs(arrays):
    x, u = arrays
    a = dvae.fit(x, u, epochs=2, seed=5, **TINY)
    b = dvae.fit(x, u, epochs=2, seed=5, **TINY)
    c = dvae.fit(x, u, epochs=2, seed=6, **TINY)
    assert _rows(a.metrics) == _rows(b.metrics)
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert _rows(a.metrics) != _rows(c.metrics)
    assert a.predict(x[0, :4], u[0, :3], u[0, 3:8], seed=1).samples.tolist() == \
        b.predict(x[0, :4], u[0, :3], u[0, 3:8], seed=1).samples.tolist()


def test_fit_out_writes_the_run_directory_of_dvae_train(npz, cli_run, tmp_path):
    out = tmp_path / "api"
    run = dvae.fit(npz, epochs=2, seed=3, out=out, **TINY)
    assert run.run_dir == str(out)
    assert sorted(os.listdir(out)) == sorted(os.listdir(cli_run))
    assert json.loads((out / "config.json").read_text()) == json.loads(open(os.path.join(cli_run, "config.json")).read())
    assert _rows(run.metrics) == _rows(dvae.load(cli_run, device="cpu").metrics)
    ours, theirs = torch.load(out / "best.pt"), torch.load(os.path.join(cli_run, "best.pt"))
    assert ours["epoch"] == theirs["epoch"]
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in theirs["model"])
    # the Run holds the best parameters, as best.pt
    assert all(torch.equal(v, theirs["model"][k]) for k, v in run.model.state_dict().items())


def test_fit_on_arrays_equals_fit_on_their_file_and_writes_them_into_the_run(arrays, npz, tmp_path, capsys):
    x, u = arrays
    from_file = dvae.fit(npz, epochs=2, seed=3, **TINY)
    out = tmp_path / "arrays"
    from_arrays = dvae.fit(x, u, epochs=2, seed=3, out=out, **TINY)
    assert _rows(from_arrays.metrics) == _rows(from_file.metrics)
    assert from_arrays.config.data.source == str(out / "data.npz")
    # the run directory reads its own data back: `dvae eval RUN` works and agrees
    code, cli, _ = run_cli(capsys, "eval", out, "--device", "cpu", "--seed", "1")
    assert code == 0 and json.loads(json.dumps(from_arrays.evaluate(seed=1))) == cli
    from dvae.run import load_data

    back = load_data(from_arrays.config)
    assert all(np.array_equal(a, b) for a, b in zip(back.xs, from_arrays.data.xs))
    assert all(np.array_equal(a, b) for a, b in zip(back.us, from_arrays.data.us))


def test_fit_from_torch_equals_fit_from_numpy(arrays):
    x, u = arrays
    a = dvae.fit(x, u, epochs=1, seed=0, **TINY)
    b = dvae.fit(torch.from_numpy(x), torch.from_numpy(u), epochs=1, seed=0, **TINY)
    assert _rows(a.metrics) == _rows(b.metrics)


def test_as_data_ragged_list_and_one_trajectory():
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(L + 1, 2)) for L in (5, 3, 7)]
    us = [rng.normal(size=(L, 1)) for L in (5, 3, 7)]
    data = as_data(xs, us)
    assert [len(x) for x in data.xs] == [6, 4, 8]
    for x, y in zip(data.xs, xs):
        np.testing.assert_array_equal(x, y.astype(np.float32))
    for u, v in zip(data.us, us):  # each episode's controls, then the unused last slot 0
        np.testing.assert_array_equal(u[:-1], v.astype(np.float32))
        assert u[-1].tolist() == [0.0]
    one = as_data(xs[0], us[0])
    assert len(one.xs) == 1 and one.splits == {"train": [0], "valid": [0], "test": [0]}


def test_as_data_discrete_actions_are_one_hot_as_collect_data_is_read():
    x = np.zeros((3, 4, 1))
    a = np.array([[0, 2, 1], [1, 1, 1], [2, 0, 0]])
    data = as_data(x, a)
    assert data.u_dim == 3
    np.testing.assert_array_equal(data.us[0][:3], np.eye(3, dtype=np.float32)[[0, 2, 1]])


@pytest.mark.parametrize("data, actions, match", [
    (np.zeros((5, 2)), np.zeros((3, 5, 1)), r"actions: expected \(4, u_dim\) float or \(4,\) int .* got shape \(3, 5, 1\)"),
    (np.zeros((2, 5, 1)), np.zeros((2, 5, 1)), r"actions: expected \(2, 4, u_dim\) float .* got shape \(2, 5, 1\)"),
    (np.zeros((2, 5, 1)), np.zeros((2, 4), np.float32), r"actions: expected .*\(2, 4\) int.* got shape \(2, 4\)"),
    (np.zeros(5), None, r"data: expected observations \(N, T\+1, x_dim\).* got shape \(5,\)"),
    (np.array(["a", "b"]), None, r"data: expected .* of real numbers, got ndarray of dtype <U1"),
    ([np.zeros((4, 2)), np.zeros((3, 1))], None, r"data\[1\]: expected x_dim 2 as data\[0\], got shape \(3, 1\)"),
    (np.array([[[0.0], [np.nan]]]), None, r"data: obs has nan .* at sequence 0, step 1, dim 0 .*missing=\"nan\""),
    (np.zeros((1, 3, 1)), np.array([[[0.0], [np.inf]]]), r"actions: has inf \(nan/inf\) at sequence 0, step 1"),
])
def test_as_data_refuses_bad_input_naming_the_argument_and_shapes(data, actions, match):
    with pytest.raises(ValueError, match=match):
        as_data(data, actions)


# --- load, save, evaluate ------------------------------------------------------------------------------
def test_evaluate_equals_dvae_eval(cli_run, capsys):
    run = dvae.load(cli_run, device="cpu")
    code, cli, _ = run_cli(capsys, "eval", cli_run, "--iw-samples", "4", "--particles", "16", "--context", "5",
                           "--horizon", "4", "--seed", "2", "--device", "cpu")
    assert code == 0
    ours = run.evaluate(iw_samples=4, particles=16, context=5, horizon=4, seed=2)
    assert json.loads(json.dumps(ours)) == cli


def test_score_generate_and_impute_equal_their_verbs(cli_run, npz, tmp_path, capsys):
    run = dvae.load(cli_run, device="cpu")
    code, cli, _ = run_cli(capsys, "score", cli_run, "--split", "all", "--iw-samples", "3", "--seed", "1", "--device", "cpu")
    assert code == 0 and json.loads(json.dumps(run.score(split="all", iw_samples=3, seed=1))) == cli
    code, cli, _ = run_cli(capsys, "generate", cli_run, "--num-samples", "3", "--steps", "6", "--seed", "4", "--device", "cpu")
    ours = run.generate(6, 3, seed=4)
    assert code == 0 and ours["x"].tolist() == cli["x"] and ours["x_mean"].tolist() == cli["x_mean"]
    with np.load(npz) as f:
        x, u = f["obs"][:2].copy(), f["actions"][:2]
    x[0, 3, 1] = x[1, 0, 0] = np.nan
    holes = tmp_path / "holes.npz"
    np.savez(holes, obs=x, actions=u)
    with pytest.raises(ValueError, match="trained without missing='nan'"):  # as `dvae impute` refuses it
        run.impute(x, u, num_samples=20, seed=5)
    gappy = str(tmp_path / "gappy")  # impute needs a run trained with --missing nan
    assert run_cli(capsys, "train", "--data", npz, "--epochs", "2", "--seed", "3", "--missing", "nan", "--out", gappy,
                   *TINY_FLAGS)[0] == 0
    code, cli, _ = run_cli(capsys, "impute", gappy, "--data", holes, "--out", tmp_path / "filled.npz",
                           "--num-samples", "20", "--seed", "5", "--device", "cpu")
    assert code == 0
    ours = dvae.load(gappy, device="cpu").impute(x, u, num_samples=20, seed=5)
    with np.load(tmp_path / "filled.npz") as f:
        np.testing.assert_array_equal(ours["x"], f["obs"])
        np.testing.assert_array_equal(ours["mean"], f["obs_mean"])
    assert ours["x"][0, 0, 0] == x[0, 0, 0] and np.isfinite(ours["x"]).all()


def test_save_writes_a_run_that_the_command_line_reads_and_resumes(arrays, tmp_path, capsys):
    x, u = arrays
    run = dvae.fit(x, u, epochs=2, seed=0, **TINY)
    out = tmp_path / "saved"
    assert run.save(out) == str(out)
    assert {"config.json", "checkpoint.pt", "best.pt", "metrics.jsonl", "data.npz", "training_curves.png"} <= \
        set(os.listdir(out))
    code, cli, _ = run_cli(capsys, "eval", out, "--iw-samples", "3", "--seed", "1", "--device", "cpu")
    assert code == 0 and json.loads(json.dumps(run.evaluate(iw_samples=3, seed=1))) == cli
    # the saved checkpoint is the last state: resuming continues exactly where training stopped
    code, resumed, _ = run_cli(capsys, "train", "--resume", out, "--epochs", "3", "--no-progress", "--no-plots")
    assert code == 0 and resumed["epochs"] == 3
    longer = dvae.fit(x, u, epochs=3, seed=0, **TINY)
    assert _rows(dvae.load(out, device="cpu").metrics) == _rows(longer.metrics)
    with pytest.raises(ValueError, match="already holds a run"):
        run.save(out)


def test_fit_into_a_directory_that_is_not_a_run_is_a_value_error_naming_out(arrays, tmp_path, capsys, monkeypatch):
    """From Python the refusal names the argument and the directory, in Python's words, before anything
    is trained; the command line keeps its own line (naming --out)."""
    import dvae.fitting

    x, u = arrays
    notrun = tmp_path / "notrun"
    notrun.mkdir()
    (notrun / "notes.txt").write_text("mine")
    trained = []
    monkeypatch.setattr(dvae.fitting, "train", lambda *a, **k: trained.append(a))
    with pytest.raises(ValueError, match=r"^out: '.*notrun' is not empty and not a run directory \(it holds "
                                         r"notes.txt\); a new run needs a new or empty directory$") as e:
        dvae.fit(x, u, epochs=1, out=notrun, **TINY)
    assert "--" not in str(e.value) and not trained
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"^out: '.*file' exists and is not a directory"):
        dvae.fit(x, u, epochs=1, out=tmp_path / "file", **TINY)
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "train", "--data", "pendulum", "--epochs", "1", "--out", notrun, *TINY_FLAGS)
    assert code == 2 and err.strip().splitlines() == [
        f"dvae train: error: {notrun}: not empty and not a run directory (it holds notes.txt); a new run needs a "
        "new or empty directory: choose another --out"]


# --- predict ---------------------------------------------------------------------------------------------
def test_predict_equals_the_kstep_windows_of_dvae_eval(cli_run, npz):
    from dvae.eval import predict_windows
    from dvae.run import load_data

    run = dvae.load(cli_run, device="cpu")
    data = load_data(run.config)
    x, u = data.xs[0], data.us[0]
    C, H = 5, 6
    torch.manual_seed(7)
    w = predict_windows(run.model, run.normalizer, [x], [u], C, H, num_samples=30)
    f = run.predict(x[:C], u[:C - 1], future_actions=u[C - 1:C - 1 + H], num_samples=30, seed=7)
    np.testing.assert_allclose(f.mean, w["mean"][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(f.quantile([0.05, 0.95]), np.stack([w["lo"][0], w["hi"][0]]), rtol=1e-5, atol=1e-5)
    assert f.samples.shape == (30, H, 2) and f.mean.shape == (H, 2)


def test_predict_batches_discrete_and_errors(cli_run, tmp_path):
    run = dvae.load(cli_run, device="cpu")
    x = np.zeros((3, 4, 2), np.float32)
    u = np.zeros((3, 3, 1), np.float32)
    f = run.predict(x, u, future_actions=np.ones((5, 1)), num_samples=7)
    assert f.mean.shape == (3, 5, 2) and f.samples.shape == (7, 3, 5, 2)
    assert f.quantile(0.5).shape == (3, 5, 2)
    fig = f.plot(truth=np.zeros((3, 5, 2)), index=1, path=str(tmp_path / "f.png"))
    assert os.path.getsize(tmp_path / "f.png") > 0 and len(fig.axes) == 3  # two dimensions and the controls
    with pytest.raises(ValueError, match=r"obs: expected \(C, 2\) or \(B, C, 2\) observations .* got shape \(4, 3\)"):
        run.predict(np.zeros((4, 3)), np.zeros((3, 1)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"future_actions: expected \(H, 1\) .* got None"):
        run.predict(np.zeros((4, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match=r"actions: expected \(3, 1\) or \(1, 3, 1\) float.* got shape \(2, 1\)"):
        run.predict(np.zeros((4, 2)), np.zeros((2, 1)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"horizon: expected 2 \(the number of future_actions\)"):
        run.predict(np.zeros((4, 2)), np.zeros((3, 1)), np.zeros((2, 1)), horizon=3)


# --- latent posteriors ------------------------------------------------------------------------------------
def test_smooth_and_filter_of_the_lgssm_match_its_kalman_smoother_and_filter(arrays):
    from dvae.data import collate

    x, u = arrays
    run = dvae.fit(x, u, model="lgssm", epochs=2, seed=0, z_dim=2, no_progress=True, device="cpu")
    obs, act = x[0, :8], u[0, :7]
    sm = run.smooth(obs, act, num_samples=4000, seed=0)
    fl = run.filter(obs, act, num_samples=4000, seed=0)
    norm = run.normalizer
    xs = torch.from_numpy(norm.x([obs])[0])
    us = torch.from_numpy(norm.u([np.concatenate([act, np.zeros((1, 1), np.float32)])])[0])
    loc, cov = run.model.smooth(collate([xs], [us]))
    sd = torch.diagonal(cov[0], dim1=-2, dim2=-1).sqrt().numpy()  # (T, z_dim)
    np.testing.assert_allclose(sm["mean"], loc[0].numpy(), atol=0.1 * sd.max() + 1e-3)
    np.testing.assert_allclose(sm["scale"], sd, rtol=0.08)
    # the filtered marginal of z_t: the smoothed marginal of the prefix x_0..x_t at its last step
    f_loc = np.stack([run.model.smooth(collate([xs[:t + 1]], [us[:t + 1]]))[0][0, t].numpy() for t in range(8)])
    np.testing.assert_allclose(fl["mean"], f_loc, atol=0.1 * sd.max() + 1e-3)
    assert not np.allclose(f_loc[:-1], loc[0].numpy()[:-1], atol=1e-3)  # filtering is not smoothing here
    np.testing.assert_allclose(f_loc[-1], loc[0, -1].numpy(), atol=1e-5)  # but they agree at the last step


# --- world models and envs ------------------------------------------------------------------------------
def test_env_of_an_in_memory_run_passes_check_env_and_matches_the_run_dir_env(cli_run):
    import warnings

    from gymnasium.utils.env_checker import check_env

    import envs  # noqa: F401
    import gymnasium as gym

    run = dvae.load(cli_run, device="cpu")
    env = run.env()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unbounded Box spaces: gymnasium advises, it does not fail
        check_env(env.unwrapped)
    from_dir = gym.make("dvae/WorldModel-v0", run_dir=cli_run)
    a, _ = env.reset(seed=3)
    b, _ = from_dir.reset(seed=3)
    np.testing.assert_array_equal(a, b)
    for _ in range(3):
        np.testing.assert_array_equal(env.step(np.array([0.5], np.float32))[0],
                                      from_dir.step(np.array([0.5], np.float32))[0])
    with pytest.raises(ValueError, match="give one of run_dir, run= "):
        gym.make("dvae/WorldModel-v0", run_dir=cli_run, run=run)


def test_world_model_steps_in_data_units(cli_run):
    run = dvae.load(cli_run, device="cpu")
    world = run.world_model(num_envs=4, seed=0, sample=False)
    assert world.x.shape == (4, 2)
    x1 = world.step(np.zeros((4, 1), np.float32))
    assert x1.shape == (4, 2)
    hist = run.world_model(num_envs=2, history=(np.zeros((5, 2)), np.zeros((4, 1))), sample=False)
    np.testing.assert_array_equal(hist.x.numpy(), np.zeros((2, 2)))


def test_plan_equals_dvae_plan(tmp_path, capsys):
    from envs import collect

    d = collect("Pendulum-v1", episodes=6, steps=12, policy="ou", seed=0)
    path = tmp_path / "p.npz"
    np.savez(path, **d)
    run = dvae.fit(str(path), epochs=1, seed=0, out=tmp_path / "run", no_plots=True, **TINY)
    args = dict(episodes=1, horizon=3, num_samples=16, iterations=1, history=4, max_steps=4, seed=2)
    ours = run.plan("Pendulum-v1", **args)
    code, cli, _ = run_cli(capsys, "plan", run.run_dir, "--env", "Pendulum-v1", "--device", "cpu",
                           *[f"--{k.replace('_', '-')}={v}" for k, v in args.items()])
    assert code == 0
    ours.pop("seconds"), cli.pop("seconds")
    assert json.loads(json.dumps(ours)) == cli


def test_import_dvae_leaves_the_api_unimported_until_used():
    import subprocess
    import sys

    code = ("import sys, dvae; assert 'dvae.api' not in sys.modules and 'dvae.fitting' not in sys.modules; "
            "dvae.fit; assert 'dvae.api' in sys.modules; print(sorted(set(dvae.__all__) & set(dir(dvae))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'Forecast', 'Run'" in out and "'fit'" in out and "'load'" in out


def test_discrete_actions_fit_and_predict_as_their_one_hot(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 3, size=(8, 10))  # (N, T) discrete actions
    x = np.cumsum(np.eye(3)[a][..., :2] - 0.3, axis=1)  # (N, T, 2), driven by the action
    x = np.concatenate([np.zeros((8, 1, 2)), x], 1)  # (N, T+1, 2)
    run = dvae.fit(x, a, epochs=1, seed=0, **TINY)
    assert run.config.model.u_dim == 3
    by_id = run.predict(x[0, :4], a[0, :3], future_actions=a[0, 3:7], num_samples=5, seed=2)
    one_hot = run.predict(x[0, :4], np.eye(3)[a[0, :3]], future_actions=np.eye(3)[a[0, 3:7]], num_samples=5, seed=2)
    np.testing.assert_array_equal(by_id.samples, one_hot.samples)
    batch = run.predict(x[:2, :4], a[:2, :3], future_actions=a[:2, 3:7], num_samples=5, seed=2)
    assert batch.mean.shape == (2, 4, 2)
    with pytest.raises(ValueError, match=r"future_actions: expected discrete actions in 0..2, got 0..3"):
        run.predict(x[0, :4], a[0, :3], future_actions=np.array([0, 3]))


def test_a_one_dimensional_control_may_be_given_as_a_vector(cli_run):
    run = dvae.load(cli_run, device="cpu")
    x, u = np.zeros((4, 2)), np.linspace(-1, 1, 8)
    a = run.predict(x, u[:3], future_actions=u[3:], num_samples=4, seed=0)
    b = run.predict(x, u[:3, None], future_actions=u[3:, None], num_samples=4, seed=0)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert a.mean.shape == (5, 2)


def test_dimension_names_from_the_caller_the_env_or_a_csv_header(arrays, tmp_path):
    x, u = arrays
    with pytest.raises(ValueError, match=r"obs_names: expected 2 names \(one per observation dimension\), got \['a'\]"):
        dvae.fit(x, u, obs_names=["a"], epochs=1, **TINY)
    run = dvae.fit(x, u, obs_names=["angle", "rate"], epochs=1, **TINY)
    fig = run.predict(x[0, :4], u[0, :3], u[0, 3:6], num_samples=4).plot()
    assert [ax.get_ylabel() for ax in fig.axes] == ["angle", "rate", "controls"]
    rows = "".join(f"{i // 5},{v[0]},{v[1]},{c}\n" for i, (v, c) in enumerate(zip(x[0, :10], u[0, :10, 0])))
    (tmp_path / "d.csv").write_text("episode,pos,vel,u_0\n" + rows)
    assert dvae.fit(str(tmp_path / "d.csv"), epochs=1, **TINY).obs_names == ["pos", "vel"]
    assert dvae.fit("pendulum", episodes=4, steps=6, epochs=1, **TINY).obs_names[0] == "cos theta"


def test_a_saved_run_saved_again_elsewhere_takes_its_data_along(arrays, tmp_path, capsys):
    x, u = arrays
    run = dvae.fit(x, u, epochs=1, seed=0, out=tmp_path / "a", no_plots=True, **TINY)
    again = dvae.load(tmp_path / "a", device="cpu")
    again.save(tmp_path / "b")
    assert again.config.data.source == str(tmp_path / "b" / "data.npz")
    assert (tmp_path / "b" / "data.npz").read_bytes() == (tmp_path / "a" / "data.npz").read_bytes()
    code, cli, _ = run_cli(capsys, "eval", tmp_path / "b", "--seed", "0", "--device", "cpu")
    assert code == 0 and cli["neg_elbo_per_step"] == run.evaluate(seed=0)["neg_elbo_per_step"]


def test_fit_choices_are_the_train_verb_choices():
    from dvae.cli import build_parser
    from dvae.fitting import choices

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    want = {a.dest: tuple(a.choices) for a in train._actions if a.choices is not None}
    assert choices() == want
