"""``dvae eval`` (bounds per step, k-step errors), ``dvae score`` (anomaly scores) and ``dvae latent``
(latent codes drawn in 2-D): flags, then :meth:`dvae.Run.evaluate` / :meth:`dvae.Run.score`."""

from __future__ import annotations

import os
import sys

from dvae.commands.common import add_common, add_run_and_split, load_run, method_defaults
from dvae.flags import finite_float

PLOTS_NEED_HORIZON = ("dvae eval: --plots {dir}: nothing drawn: kstep_errors.png and the prediction plots show k-step "
                      "predictions, which need --context and --horizon")
"""The one line on stderr for ``--plots`` without ``--horizon``."""


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="bounds per time step (and k-step open-loop errors) of a trained run")
    add_run_and_split(p)
    p.add_argument("--iw-samples", type=int, default=0, help="K of the importance-weighted bound")
    p.add_argument("--particles", type=int, default=0,
                   help="also the bootstrap particle filter's estimate with N particles (dmm, vrnn): nll_pf_per_step")
    p.add_argument("--context", type=int, default=None,
                   help="k-step errors: observations each prediction is conditioned on (with --horizon; default: none)")
    p.add_argument("--horizon", type=int, default=None,
                   help="k-step errors: steps predicted open loop after the context, kstep_rmse against the "
                        "persistence and linear baselines (with --context; default: none)")
    p.add_argument("--num-samples", type=int, default=method_defaults("evaluate")["num_samples"],
                   help="k-step errors: samples of the predictive distribution")
    p.add_argument("--plots", metavar="DIR", default=None,
                   help="with --context and --horizon: write kstep_errors.png and prediction plots with bands "
                        "(frames for image data) into DIR (default: none)")
    p.add_argument("--missing", choices=["none", "nan"], default=None,
                   help="nan: NaN entries are missing observations (default: as the run was trained)")
    add_common(p, device_and_seed=True)


def add_score(sub) -> None:
    p = sub.add_parser("score", help="anomaly scores per sequence and per time step, with a threshold")
    add_run_and_split(p)
    p.add_argument("--iw-samples", type=int, default=0, help="also the K-sample importance-weighted bound")
    p.add_argument("--quantile", type=finite_float, default=method_defaults("score")["quantile"],
                   help="threshold: this quantile of neg_elbo_per_step over the run's validation split")
    p.add_argument("--format", choices=["json", "csv"], default="json",
                   help="json: one object; csv: a comment line with the thresholds, then index,step,neg_elbo rows")
    p.add_argument("--missing", choices=["none", "nan"], default=None,
                   help="nan: NaN entries are missing observations (default: as the run was trained)")
    add_common(p, device_and_seed=True)


def add_latent(sub) -> None:
    p = sub.add_parser("latent", help="latent codes in 2-D (PCA, t-SNE) coloured by a label; interpolation and "
                                      "traversal of the codes per sequence (the vrae's z, the dsae's static v, its "
                                      "z_t drawn once for all), decoded; PNGs")
    add_run_and_split(p)
    p.add_argument("--label", default="auto",
                   help="colour: auto, energy (Pendulum), length, index, or an (N,) array of the .npz (e.g. labels)")
    p.add_argument("--pair", type=int, nargs=2, metavar=("I", "J"), default=None,
                   help="positions in the split of the two sequences to interpolate between "
                        "(default: lowest and highest label)")
    p.add_argument("--dim", type=int, default=None, help="dimension of the code to traverse (default: the most varied)")
    p.add_argument("--num-points", type=int, default=7, help="codes along each interpolation and the traversal")
    p.add_argument("--span", type=finite_float, default=2.0, help="traversal: prior standard deviations either side of 0")
    p.add_argument("--no-tsne", action="store_true", help="skip t-SNE (it needs scikit-learn: pip install dvae[latent])")
    p.add_argument("--out", default=None, help="directory for the PNGs (default RUN_DIR/latent)")
    add_common(p, device_and_seed=True)


def _missing(a):
    """--missing as Run's ``missing``: None (as the run was trained), or whether NaN marks a missing entry."""
    return None if a.missing is None else a.missing == "nan"


def cmd_eval(a) -> dict:
    if a.plots is not None and a.horizon is None:
        print(PLOTS_NEED_HORIZON.format(dir=a.plots), file=sys.stderr, flush=True)
    return load_run(a).evaluate(a.data, a.split, a.iw_samples, a.context, a.horizon, a.particles,
                                num_samples=a.num_samples, seed=a.seed, plots=a.plots, missing=_missing(a))


def cmd_score(a):
    result = load_run(a).score(a.data, a.split, a.iw_samples, a.quantile, seed=a.seed, missing=_missing(a))
    if a.format == "json":
        return result
    lines = [f"# threshold={result['threshold']!r} (quantile {a.quantile} of neg_elbo_per_step on the validation "
             f"split); step_threshold={result['step_threshold']!r} (of the per-step scores)",
             "index,step,neg_elbo"]
    lines += [f"{s['index']},{t},{v!r}" for s in result["sequences"] for t, v in enumerate(s["per_step"])]
    return "\n".join(lines)


def cmd_latent(a) -> dict:
    import pyro

    from dvae.arrays import check_dims
    from dvae.eval.latent import latent_report
    from dvae.files import make_dir
    from dvae.run import load_data

    if a.num_points < 2:
        raise ValueError("--num-points must be at least 2")
    run = load_run(a)
    data = run.data if a.data is None else load_data(run.config, a.data)
    check_dims(data, run.config.model)
    pyro.set_rng_seed(a.seed)
    out_dir = a.out or make_dir(os.path.join(a.run_dir, "latent"))  # a planted symlink is replaced, not followed
    report = latent_report(run.model, run.normalizer, data, a.split, out_dir, a.label, a.pair, a.dim, a.num_points,
                           a.span, not a.no_tsne, a.seed)
    return {"run_dir": a.run_dir, "model": run.config.model.model, "data": data.source, "split": a.split, **report}
