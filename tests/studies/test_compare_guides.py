"""``python -m studies.compare --sections guides --quick``: every guide trained, scored and tabled with finite numbers."""

import json
import math


from studies.compare.cli import main
from studies.compare.guides import GUIDES


# the section's smoke test (about 8 s on a quiet 2-core machine): six short trainings
def test_the_guides_section_runs_quick(tmp_path):
    assert main(["--sections", "guides", "--quick", "--threads", "1", "--out", str(tmp_path / "c.md"),
                 "--work-dir", str(tmp_path / "w")]) == 0
    doc = (tmp_path / "c.md").read_text()
    stored = json.loads((tmp_path / "c" / "guides.json").read_text())
    res = stored["results"]
    assert [k for k, *_ in GUIDES] == ["mean_field", "ltr", "dks", "dks_bidirectional", "iaf"]
    exact = res["exact_nll_per_step"]
    assert math.isfinite(exact["test"]) and math.isfinite(exact["valid"])
    for key, label, _, _ in GUIDES:
        r = res["guides"][key]
        assert r["epochs"] >= 1 and len(r["curve"]["train_seconds"]) == r["epochs"]
        for name in ("test_neg_elbo_per_step", "test_nll_iw_per_step", "test_kl_per_step", "train_seconds",
                     "seconds_per_epoch"):
            assert math.isfinite(r[name]), (key, name)
        assert all(math.isfinite(v) for v in r["curve"]["valid_neg_elbo_per_step"])
        # the table row of every guide, with its own numbers
        row = next(line for line in doc.splitlines() if line.startswith(f"| {label} |"))
        assert f"{r['test_neg_elbo_per_step']:.3f}" in row and f"{r['test_nll_iw_per_step']:.3f}" in row
        # each run used its own guide
        cfg = json.loads((tmp_path / "w" / "guides" / key / "config.json").read_text())["model"]
        assert cfg["guide"] == key.split("_bidirectional")[0] and cfg["bidirectional"] == key.endswith("bidirectional")
    assert res["guides"]["iaf"]["command"].endswith("--guide iaf --num-iafs 1 --no-bidirectional")
    assert f"{exact['test']:.3f}" in next(line for line in doc.splitlines() if line.startswith("| exact NLL"))
    assert (tmp_path / "figures" / "compare-guides.png").stat().st_size > 10_000
    assert "(figures/compare-guides.png)" in doc
