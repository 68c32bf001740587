"""metrics.jsonl is strict JSON: a value that is not a finite number is written as null (never the
non-standard NaN or Infinity tokens), and every reader gives it back as NaN."""

import json
import math

from dvae.run import read_metrics, write_metrics


def _strict(line):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_a_nan_metric_is_written_as_null_and_read_back_as_nan(tmp_path):
    rows = [{"epoch": 1, "train_loss": 1.5, "valid_neg_elbo_per_step": math.nan, "train_kl_per_step": math.inf,
             "valid_kl_per_dim": [0.25, math.nan], "active_units": 1, "posterior_collapse": False}]
    write_metrics(str(tmp_path), rows)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    row = _strict(lines[0])  # strict JSON: no NaN or Infinity token
    assert row == {"epoch": 1, "train_loss": 1.5, "valid_neg_elbo_per_step": None, "train_kl_per_step": None,
                   "valid_kl_per_dim": [0.25, None], "active_units": 1, "posterior_collapse": False}
    back = read_metrics(str(tmp_path))[0]
    assert math.isnan(back["valid_neg_elbo_per_step"]) and math.isnan(back["train_kl_per_step"])
    assert back["valid_kl_per_dim"][0] == 0.25 and math.isnan(back["valid_kl_per_dim"][1])
    assert {k: v for k, v in back.items() if k not in ("valid_neg_elbo_per_step", "train_kl_per_step",
                                                        "valid_kl_per_dim")} == {
        "epoch": 1, "train_loss": 1.5, "active_units": 1, "posterior_collapse": False}


def test_the_training_curves_plot_rows_read_back_with_nan(tmp_path):
    """``dvae.load(run).metrics`` is :func:`read_metrics`; the training curves take its NaN as a gap."""
    from dvae.eval.plots import plot_training_curves

    rows = [{"epoch": e, "train_loss": 2.0 / e, "valid_neg_elbo_per_step": math.nan if e == 2 else 1.0 / e}
            for e in (1, 2, 3)]
    write_metrics(str(tmp_path), rows)
    back = read_metrics(str(tmp_path))
    assert math.isnan(back[1]["valid_neg_elbo_per_step"])
    plot_training_curves(back, str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
