"""examples/python_api_tour.py runs its three uses end to end in --quick mode."""

import importlib.util
import json
import math
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_tour_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("tour", os.path.join(ROOT, "examples", "python_api_tour.py"))
    tour = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tour)
    res = tour.main(["--quick", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(res))
    for figure in ("forecast.png", "pendulum_forecast.png", "bounds.png"):  # the tutorial's three figures
        assert os.path.getsize(tmp_path / figure) > 10_000, figure
    osc, lg = res["oscillator"], res["linear_gaussian"]
    assert len(osc["kstep_rmse"]) == 20 and 0 <= osc["forecast_coverage90"] <= 1
    assert set(res["pendulum"]["baselines"]) == {"random", "true_model"}
    assert math.isfinite(res["pendulum"]["forecast_rmse"])
    assert all(math.isfinite(v) for v in lg.values())
    # the importance-weighted bound is never looser than the ELBO (64 samples against 1, the same model)
    assert lg["dmm_nll_iw_per_step"] <= lg["dmm_neg_elbo_per_step"]
