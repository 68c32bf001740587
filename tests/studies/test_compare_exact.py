"""`python -m studies.compare --sections exact,nonlinear --quick`: the document and the results of both sections."""

import json
import math

import pytest

from dvae.models import MODELS
from studies.compare.cli import main

TOL = 0.05  # nats per step: what one Monte Carlo draw of an ELBO on the quick test set can overshoot by


def _numbers(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _numbers(v, f"{prefix}{k}.")
        elif isinstance(v, float):
            yield f"{prefix}{k}", v


# the sections' smoke test (~15 s on a quiet 2-core machine): four models trained for 2 s each, IW to K = 1000, filters
def test_quick_exact_and_nonlinear_sections(tmp_path, capsys):
    out = tmp_path / "c.md"
    assert main(["--sections", "exact,nonlinear", "--quick", "--threads", "1", "--out", str(out),
                 "--work-dir", str(tmp_path / "w")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["sections"]) == {"exact", "nonlinear"}
    doc = out.read_text()
    for row in ("| exact, true parameters (Kalman) |", "| LGSSM fitted by ML (exact) |", "| DMM IW, K = 1000 |",
                "| VRNN particle filter, 1000 particles |", "| VRAE ELBO |",
                "| particle filter, true parameters, 1000 particles |", "| IW, K = 1000 |",
                "| particle filter, 1000 particles |", "compare-exact.png", "compare-nonlinear.png"):
        assert row in doc, row
    for fam in MODELS:  # a row per family in both sections, the particle filter for every non-exact one
        if fam != "lgssm":
            assert f"| {fam.upper()} ELBO |" in doc and f"| {fam.upper()} particle filter, 1000 particles |" in doc, fam
        assert doc.count(f"| {fam.upper()} |") >= 1, fam
    assert "not run yet" not in doc
    assert (tmp_path / "figures" / "compare-exact.png").stat().st_size > 0
    assert (tmp_path / "figures" / "compare-nonlinear.png").stat().st_size > 0
    exact = json.loads((tmp_path / "c" / "exact.json").read_text())
    nonlinear = json.loads((tmp_path / "c" / "nonlinear.json").read_text())
    for name, v in list(_numbers(exact["results"])) + list(_numbers(nonlinear["results"])):
        assert math.isfinite(v), name

    r = exact["results"]
    truth, M = r["exact_true"], r["models"]
    for f in (f for f in MODELS if f != "lgssm"):
        assert M[f]["elbo"] <= M[f]["iw_1000"] + TOL, f
        # every fitted model's bounds, and its particle filter, lie below the truth
        for k, v in M[f].items():
            if k == "elbo" or (k.startswith(("iw_", "pf_")) and not k.startswith("seconds")):
                assert v <= truth + TOL, (f, k, v, truth)
    assert M["lgssm"]["elbo"] <= truth + TOL  # the fitted exact model: below the truth, up to sampling
    # the particle filter under the true parameters closes in on the exact value
    pf = r["true_pf"]
    assert abs(pf["pf_1000"] - truth) < min(abs(pf["pf_10"] - truth), 0.05)

    ceiling = nonlinear["results"]["noise_ceiling"]
    for f, m in nonlinear["results"]["models"].items():
        best = m["elbo"] if f == "lgssm" else max(m["iw_1000"], m["pf_1000"])
        assert m["elbo"] <= best + TOL and best <= ceiling, f
