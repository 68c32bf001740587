"""The polyphonic section of ``python -m studies.compare``: skipped without data; on a tiny Boulanger-Lewandowski pickle
in quick mode, one row per family with finite bounds, the IW bound below the -ELBO, and the test steps
counted as the data has them."""

import json
import math
import pickle

import numpy as np

from studies.compare.cli import main
from studies.compare import polyphonic


def _tiny_pickle(path, seed=0):
    """A dict of train/valid/test lists of sequences of tuples of MIDI notes 21..108 (some steps empty)."""
    rng = np.random.default_rng(seed)

    def seq(n_steps):
        return [tuple(int(n) for n in rng.choice(np.arange(21, 109), size=rng.integers(0, 4), replace=False))
                for _ in range(n_steps)]

    data = {"train": [seq(int(rng.integers(8, 30))) for _ in range(8)],
            "valid": [seq(int(rng.integers(8, 30))) for _ in range(3)],
            "test": [seq(int(rng.integers(8, 30))) for _ in range(4)]}
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)
    return data


def _compare(tmp_path, *extra):
    out = tmp_path / "doc" / "comparisons.md"
    rc = main(["--sections", "polyphonic", "--quick", "--threads", "1", "--out", str(out),
               "--work-dir", str(tmp_path / "work"), *extra])
    return rc, out


def test_skipped_without_polyphonic_dir(tmp_path, capsys):
    rc, out = _compare(tmp_path)
    assert rc == 0
    stored = json.loads((out.parent / "comparisons" / "polyphonic.json").read_text())
    assert stored["skipped"] == "no --polyphonic-dir given"
    assert "Not run: no --polyphonic-dir given" in out.read_text()
    assert json.loads(capsys.readouterr().out)["skipped"] == {"polyphonic": "no --polyphonic-dir given"}


def test_quick_rows_on_a_tiny_pickle(tmp_path):
    poly = tmp_path / "poly"
    poly.mkdir()
    data = _tiny_pickle(poly / "Nottingham.pickle")
    # two families first, then a third: the first two are kept from the stored results, the rest not run yet
    rc, out = _compare(tmp_path, "--polyphonic-dir", str(poly), "--families", "dmm,vrnn")
    assert rc == 0
    rc, out = _compare(tmp_path, "--polyphonic-dir", str(poly), "--families", "vrae")
    assert rc == 0
    stored = json.loads((out.parent / "comparisons" / "polyphonic.json").read_text())
    assert stored["skipped"] is None
    res = stored["results"]
    assert res["datasets"] == ["Nottingham"] and res["missing"] == ["MuseData", "Piano-midi.de"]
    fams = polyphonic.families()
    assert "lgssm" not in fams and {"dmm", "vrnn", "vrae", "storn", "srnn", "rssm", "vae"} <= set(fams)
    runs = res["runs"]
    assert [(r["dataset"], r["family"]) for r in runs] == [("Nottingham", f) for f in ("dmm", "vrnn", "vrae")]
    assert [("run" in r) for r in runs] == [True, True, False]  # carried, carried, this run
    assert res["not_run"] == [["Nottingham", f] for f in fams if f not in ("dmm", "vrnn", "vrae")]
    # quick mode: the first test sequences, cut to QUICK_STEPS steps, counted by hand
    n_test = polyphonic.QUICK_SEQUENCES["test"]
    steps = sum(min(len(s), polyphonic.QUICK_STEPS) for s in data["test"][:n_test])
    for r in runs:
        assert r["test_sequences"] == n_test and r["test_steps"] == steps
        for k in ("neg_elbo_per_step", "nll_iw_per_step", "kl_per_step", "train_wall_s", "eval_s"):
            assert math.isfinite(r[k]), (r["family"], k)
        assert r["epochs"] == 1 and r["iw_samples"] == polyphonic.QUICK_IW_SAMPLES
        # the K-sample IW bound is tighter than the ELBO in expectation; one draw each, so a tolerance
        assert r["neg_elbo_per_step"] >= r["nll_iw_per_step"] - 0.5, r
        # an upper bound on -log p of 88 Bernoulli keys can't be below 0
        assert r["nll_iw_per_step"] > 0
    doc = out.read_text()
    for f in ("dmm", "vrnn", "vrae"):
        assert f"| Nottingham | {f} |" in doc
    assert "| Nottingham | storn | not run yet |" in doc
    assert "--sections polyphonic --polyphonic-dir DIR --families " in doc
    assert "Quick mode" in doc and (out.parent / "figures" / "compare-polyphonic.png").stat().st_size > 0


def test_a_dir_without_the_pickles_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, _ = _compare(tmp_path, "--polyphonic-dir", str(tmp_path / "empty"))
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Nottingham.pickle" in err


def test_every_published_figure_names_its_source():
    quoted = [p for p in polyphonic.PUBLISHED if p["value"] is not None]
    assert quoted, "no published figure at all"
    for p in quoted:
        assert p["source"].startswith("https://") and p["dataset"] in dict(polyphonic.DATASETS)
    for p in polyphonic.PUBLISHED:
        if p["value"] is None:
            assert p["note"].startswith("not found")


def test_polyphonic_datasets_runs_only_those(tmp_path, capsys):
    poly = tmp_path / "poly"
    poly.mkdir()
    _tiny_pickle(poly / "Nottingham.pickle")
    _tiny_pickle(poly / "MuseData.pickle", seed=1)
    rc, out = _compare(tmp_path, "--polyphonic-dir", str(poly), "--families", "vae", "--polyphonic-datasets", "MuseData")
    assert rc == 0
    res = json.loads((out.parent / "comparisons" / "polyphonic.json").read_text())["results"]
    assert [(r["dataset"], r["family"]) for r in res["runs"]] == [("MuseData", "vae")]
    assert res["datasets"] == ["Nottingham", "MuseData"] and ["Nottingham", "vae"] in res["not_run"]
    assert res["runs"][0]["budget_kind"] == "cpu" and res["runs"][0]["train_cpu_s"] > 0
    capsys.readouterr()
    rc, _ = _compare(tmp_path, "--polyphonic-dir", str(poly), "--polyphonic-datasets", "Bach")
    assert rc == 2 and "--polyphonic-datasets: unknown data set Bach" in capsys.readouterr().err
