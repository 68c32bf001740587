"""`python -m studies.compare --sections worldmodels --quick`: a row per family, the planning score from
its own baselines, the review's table cited, and a re-run of one family keeping the others."""

import json
import math

from dvae.models import MODELS
from studies.compare import worldmodels
from studies.compare.cli import main


def _run(tmp_path, capsys, *extra):
    out = tmp_path / "c.md"
    assert main(["--sections", "worldmodels", "--quick", "--threads", "1", "--out", str(out),
                 "--work-dir", str(tmp_path / "w"), *extra]) == 0
    capsys.readouterr()
    return out, json.loads((tmp_path / "c" / "worldmodels.json").read_text())


# ~10 s on a quiet 2-core machine: every family trained for 1 s, a 3-step planning episode each
def test_quick_worldmodels_ranks_every_family(tmp_path, capsys):
    out, stored = _run(tmp_path, capsys)
    res = stored["results"]
    assert list(res["models"]) == list(MODELS) and res["not_run"] == []
    S, base = res["sizes"], res["baselines"]
    for fam, m in res["models"].items():
        assert len(m["kstep_rmse"]) == S["horizon"]
        for v in m["kstep_rmse"] + [m["nll_elbo"], m["nll_iw"], m["plan_return"]]:
            assert math.isfinite(v), fam
        # the planning score is (R_model - R_random) / (R_true - R_random), as `dvae plan` normalizes
        assert m["plan_score"] == (m["plan_return"] - base["random"]) / (base["true_model"] - base["random"])
        assert m["nll_elbo"] == -m["elbo"]
    assert res["models"]["lgssm"]["nll_iw"] == res["models"]["lgssm"]["nll_elbo"]  # exact: no IW bound
    doc = out.read_text()
    for fam in MODELS:
        assert f"| {fam.upper()} |" in doc, fam
    assert "XiaoyuBIE1994/DVAE" in doc and "| SRNN | 0.0248 | 3.64 | 0.97 | srnn |" in doc
    assert (tmp_path / "figures" / "compare-worldmodels.png").stat().st_size > 0

    # one family again: the others are kept from the stored run, with where they came from
    first = res["models"]
    _, stored = _run(tmp_path, capsys, "--families", "vae")
    again = stored["results"]["models"]
    assert list(again) == list(MODELS)
    for fam in MODELS:
        if fam != "vae":
            assert "--families" not in again[fam]["run"]["command"]  # the first run's, recorded when carried
            assert again[fam]["kstep_rmse"] == first[fam]["kstep_rmse"]
    assert "run" not in again["vae"]


def test_review_table_is_the_readme_ordering():
    # the README's RMSE column, best first: SRNN, VRNN, STORN, DKF, DSAE, RVAE-NonCausal, RVAE-Causal, VAE
    order = [m for m, *_ in sorted(worldmodels.REVIEW_TABLE, key=lambda r: r[2])]
    assert order == ["SRNN", "VRNN", "STORN", "DKF", "DSAE", "RVAE-NonCausal", "RVAE-Causal", "VAE"]


def test_the_review_ordering_beside_ours_is_read_off_the_scores():
    from studies.compare.review import beside, review_order

    assert review_order(["vae", "dmm", "srnn", "lgssm", "rvae"]) == ["srnn", "dmm", "rvae", "vae"]
    # higher is better: srnn 3 > vae 2 > dmm 1; the review has srnn before dmm before vae
    line = beside({"dmm": 1.0, "vae": 2.0, "srnn": 3.0, "lgssm": 9.0}, "the IW bound", True)
    assert "both have: SRNN, DMM, VAE)" in line and "ours (the IW bound) is SRNN, VAE, DMM (a different order" in line
    assert "(the same order" in beside({"dmm": 2.0, "srnn": 1.0}, "NLL", False)
    assert beside({"dmm": 1.0, "lgssm": 2.0}, "x", True) == ""  # one shared family: no order to set beside


def test_spearman_of_two_orders():
    assert worldmodels._spearman(["a", "b", "c"], ["a", "b", "c"]) == 1.0
    assert worldmodels._spearman(["a", "b", "c"], ["c", "b", "a"]) == -1.0
    # d = (0, 1, 1) over n = 3: 1 - 6 * 2 / (3 * 8) = 0.5
    assert worldmodels._spearman(["a", "b", "c"], ["a", "c", "b"]) == 0.5
    assert worldmodels._spearman(["a"], ["a"]) != worldmodels._spearman(["a"], ["a"])  # NaN
