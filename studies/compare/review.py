"""The DVAE review's own results (Girin et al., the reference code XiaoyuBIE1994/DVAE), cited beside the
study's orderings: only the ORDER of the families is compared, as the task, data and budgets differ."""

from __future__ import annotations

from typing import Dict, List

REVIEW_SOURCE = ("https://github.com/XiaoyuBIE1994/DVAE/blob/04a3a90d5368650db18b8475fb0a5522d925c7a7/README.md",
                 "Girin, Leglaive, Bie, Diard, Hueber, Alameda-Pineda, Dynamical Variational Autoencoders: A Review "
                 "of Recent Trends; the code's README, section \"Main results\"")
REVIEW_TABLE = [  # (model as the README names it, our family or None, RMSE, PESQ, STOI), copied from the README
    ("VAE", "vae", 0.0510, 2.05, 0.86),
    ("DKF", "dmm", 0.0344, 3.30, 0.94),
    ("STORN", "storn", 0.0338, 3.05, 0.93),
    ("VRNN", "vrnn", 0.0267, 3.60, 0.96),
    ("SRNN", "srnn", 0.0248, 3.64, 0.97),
    ("RVAE-Causal", "rvae", 0.0499, 2.27, 0.89),
    ("RVAE-NonCausal", None, 0.0479, 2.37, 0.89),
    ("DSAE", "dsae", 0.0469, 2.32, 0.90),
]
"""The review's own results, as its README states them: speech re-synthesis (analysis-resynthesis of
WSJ0 power spectrograms; train wsj0_si_tr_s, validation wsj0_si_dt_05, test wsj0_si_et_05; Adam, batch
32), averages over the test set; RMSE lower is better, PESQ and STOI higher. The README lists eight
models (no KVAE row although its code ships KVAE). A different task and data from ours: the orderings
are set side by side, not the numbers."""


def review_order(families: List[str]) -> List[str]:
    """Those of our ``families`` the review's table has, in its order by RMSE (best first)."""
    ranked = [f for _, f, *_ in sorted(REVIEW_TABLE, key=lambda r: r[2]) if f is not None]
    return [f for f in ranked if f in families]


def beside(scores: Dict[str, float], what: str, higher_is_better: bool) -> str:
    """One sentence: on the families both have, the review's order (speech re-synthesis RMSE, best first)
    and ours by ``scores`` (``what``), best first; empty when fewer than two are shared."""
    shared = review_order([f for f, v in scores.items() if v == v])  # NaN: no order
    if len(shared) < 2:
        return ""
    ours = sorted(shared, key=lambda f: -scores[f] if higher_is_better else scores[f])
    same = "the same order" if ours == shared else "a different order"
    return (f"Beside the review's own ordering (its README's speech re-synthesis RMSE, best first, on the families "
            f"both have: {', '.join(f.upper() for f in shared)}), ours ({what}) is "
            f"{', '.join(f.upper() for f in ours)} ({same}; a different task, data and budget, so only the orders are "
            f"set side by side: [README]({REVIEW_SOURCE[0]})).")
