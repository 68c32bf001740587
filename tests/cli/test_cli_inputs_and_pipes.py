"""`dvae --version`, output piped into a reader that stops early, and .csv / .npy inputs."""

import os
import subprocess
import sys

import numpy as np
import pytest

import dvae
from dvae.data import from_trajectories, load_source
from dvae.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


def test_version_prints_the_package_version():
    p = subprocess.run([sys.executable, "-m", "dvae.cli", "--version"], capture_output=True, text=True, env=ENV)
    assert p.returncode == 0 and p.stdout.strip() == f"dvae {dvae.__version__}"


def test_output_piped_into_head_ends_quietly(tmp_path):
    x = np.random.default_rng(0).normal(size=(4, 6, 2))
    run = dvae.fit(x, epochs=1, seed=0, out=tmp_path / "run", no_progress=True, no_plots=True, z_dim=2, rnn_dim=8,
                   transition_dim=8, emission_dim=8, device="cpu")
    # about 1 MB of JSON on one line: far more than a pipe holds, so the write fails once head has gone
    cmd = (f"{sys.executable} -m dvae.cli generate {run.run_dir} --num-samples 400 --steps 400 --device cpu "
           "| head -c 10; echo \" rc=${PIPESTATUS[0]}\"")
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=ENV, timeout=300)
    assert p.stdout.endswith(" rc=141\n"), p.stdout[-200:]
    assert p.stderr == ""


def _write_csv(path, text):
    path.write_text(text)
    return str(path)


def test_csv_episodes_and_controls_are_the_trajectory_layout(tmp_path):
    path = _write_csv(tmp_path / "d.csv", "episode,x0,x1,u_0\n"
                                          "0,1,2,0.5\n0,3,4,-0.5\n0,5,6,\n"
                                          "1,7,8,1\n1,9,10,\n")
    data = load_source(path)
    obs = np.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 10], [9, 10]]], np.float64)
    want = from_trajectories(obs, np.array([[[0.5], [-0.5]], [[1.0], [0.0]]]), np.array([2, 1]))
    assert len(data.xs) == 2
    for a, b in zip(data.xs, want.xs):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(data.us, want.us):
        np.testing.assert_array_equal(a, b)
    assert data.meta["obs_names"] == "x0,x1" and data.meta["action_names"] == "u_0"


def test_csv_without_an_episode_column_is_one_sequence_and_empty_cells_are_missing_with_nan(tmp_path):
    path = _write_csv(tmp_path / "d.csv", "a,b\n1,2\n,4\n5,6\n")
    with pytest.raises(DataError, match=r"d.csv: line 3, column 'a': '' is not a number \(an empty cell is a missing"):
        load_source(path)
    data = load_source(path, missing=True)
    assert len(data.xs) == 1 and np.isnan(data.xs[0][1, 0]) and data.us is None


@pytest.mark.parametrize("text, match", [
    ("1,2\n3,4\n", r"line 1 must be a header row naming the columns"),
    ("a,b\n1,2,3\n", r"line 2: 3 cells, the header has 2"),
    ("a,b\n1,x\n", r"line 2, column 'b': 'x' is not a number"),
    ("episode,u_0\n0,1\n", r"no observation column"),
])
def test_csv_errors_name_the_file_and_line(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        load_source(_write_csv(tmp_path / "bad.csv", text))


def test_npy_observations_are_read_and_other_shapes_refused_with_how_to_convert(tmp_path):
    obs = np.random.default_rng(0).normal(size=(3, 5, 2)).astype(np.float32)
    np.save(tmp_path / "obs.npy", obs)
    data = load_source(str(tmp_path / "obs.npy"))
    assert len(data.xs) == 3 and data.us is None
    np.testing.assert_array_equal(data.xs[1], obs[1])
    np.save(tmp_path / "one.npy", obs[0])
    assert len(load_source(str(tmp_path / "one.npy")).xs) == 1
    np.save(tmp_path / "bad.npy", obs[0, 0])
    with pytest.raises(DataError, match=r"bad.npy: a .npy input holds observations .* got shape \(2,\); .* np.savez"):
        load_source(str(tmp_path / "bad.npy"))


def test_unknown_formats_say_how_to_convert(tmp_path):
    (tmp_path / "d.parquet").write_text("x")
    with pytest.raises(DataError, match=r"unknown data format .* convert other formats to a trajectory .npz: np.savez"):
        load_source(str(tmp_path / "d.parquet"))
