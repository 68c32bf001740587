"""`python -m studies.compare --sections estimators --quick`: the document and results have every row, finite numbers,
and the relations that hold at any size."""

import json
import math

import torch

from studies.compare.cli import main


def test_quick_estimators_section_writes_rows_figures_and_true_relations(tmp_path):
    n = torch.get_num_threads()
    try:
        rc = main(["--sections", "estimators", "--quick", "--threads", "1", "--out", str(tmp_path / "c.md"),
                   "--work-dir", str(tmp_path / "w")])
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    doc = (tmp_path / "c.md").read_text()
    res = json.loads((tmp_path / "c" / "estimators.json").read_text())["results"]
    assert "## Gradient estimators" in doc
    assert (tmp_path / "figures" / "compare-estimators-variance.png").stat().st_size > 0
    assert (tmp_path / "figures" / "compare-estimators-race.png").stat().st_size > 0
    assert "figures/compare-estimators-variance.png" in doc and "figures/compare-estimators-race.png" in doc

    rows = res["rows"]
    s = res["sizes"]
    expected = {("analytic", 1), ("sampled", 1)} | {("iw", k) for k in s["iw"]} | {("tmc", k) for k in s["tmc"]}
    for model, points in (("dmm-dks", ("init", "trained")), ("dmm-mean_field", ("trained",))):
        for point in points:
            sub = [r for r in rows if r["model"] == model and r["point"] == point]
            assert {(r["estimator"], r["particles"]) for r in sub} == expected
            for r in sub:
                for key in ("value_mean", "value_se", "grad_var", "grad_snr", "ms_per_step", "var_ratio"):
                    assert math.isfinite(r[key]), (r, key)
                assert r["grad_var"] > 0 and r["ms_per_step"] > 0 and r["draws"] == s["draws"]
                # a true bound sits below the exact (Kalman) log-likelihood of the batch
                if r["is_bound"]:
                    assert r["value_mean"] < r["exact_per_step"]
                assert r["is_bound"] == (r["estimator"] != "tmc" or model == "dmm-mean_field")
            assert next(r for r in sub if r["estimator"] == "analytic")["var_ratio"] == 1.0
    # every table row is in the document: one line per (model, point, estimator, K)
    table_lines = [line for line in doc.splitlines() if line.startswith("| dmm-")]
    assert len(table_lines) == len(rows) == 3 * len(expected)

    for r in res["race"]:
        c = r["curve"]
        assert len(c) == s["race_evals"] + 1
        assert [p["updates"] for p in c] == sorted(p["updates"] for p in c) and c[-1]["updates"] > 0
        for p in c:
            assert math.isfinite(p["valid_elbo_per_step"]) and math.isfinite(p["valid_iw_per_step"])
            assert p["valid_elbo_per_step"] < r["exact_valid_per_step"]
    for g in res["grid"]:
        assert math.isfinite(g["mean"]) and math.isfinite(g["log_p"])
        if g["guide"] == "mean_field":  # true bounds on the grid-sum log p(x)
            assert g["gap"] < 3 * g["se"]
