"""Run's bounds and anomaly scores: :meth:`Run.evaluate` (``dvae eval``) and :meth:`Run.score`
(``dvae score``), with the verbs' JSON keys."""

from __future__ import annotations

from typing import Optional

import numpy as np

from dvae.arrays import check_sample_size

SPLITS = ("train", "valid", "test", "all")


class Evaluating:
    """The methods of :class:`dvae.trained.Run` that measure a model on data."""

    def evaluate(self, data=None, split: str = "test", iw_samples: Optional[int] = None, context: Optional[int] = None,
                 horizon: Optional[int] = None, particles: Optional[int] = None, *, num_samples: int = 64,
                 seed: int = 0, plots: Optional[str] = None, missing: Optional[bool] = None, actions=None) -> dict:
        """Bounds per time step of a split (and with ``context`` and ``horizon``, k-step open-loop errors):
        the numbers and keys of ``dvae eval`` on the same run, data and ``seed``. ``data``: None (the
        run's own), a SOURCE, a SequenceData or arrays with ``actions`` (their default splits:
        ``split="all"`` for every sequence). ``plots``: a directory for the k-step plots (with
        ``horizon``)."""
        import pyro

        from dvae.errors import DataError
        from dvae.eval import kstep_report
        from dvae.infer.evaluation import evaluate

        model, config, norm = self.model, self.config, self.normalizer
        iw_samples, particles = iw_samples or 0, particles or 0
        if split not in SPLITS:
            raise ValueError(f"split: expected train, valid, test or all, got {split!r}")
        for name, value in (("iw_samples", iw_samples), ("particles", particles)):
            if value < 0:
                raise ValueError(f"{name}: expected >= 0, got {value}")
        if (context is None) != (horizon is None):
            raise ValueError(f"context, horizon: expected both or neither, got {context}, {horizon}")
        if horizon is not None and (context < 1 or horizon < 1):
            raise ValueError(f"context, horizon: expected at least 1, got {context}, {horizon}")
        data = self._data_for(data, actions, missing)
        xs, us = data.subset(split)
        if not xs:
            raise ValueError(f"{data.source}: split {split!r} is empty")
        check_sample_size("iw_samples", iw_samples, config.model, xs, config.train.eval_batch_size)
        check_sample_size("particles", particles, config.model, xs, 1)
        check_sample_size("num_samples", num_samples, config.model, xs, 1)
        if particles:
            from dvae.infer.smc import filter_for

            filter_for(model)  # a one-line error for a family the filter does not run on, before any work
        pyro.set_rng_seed(seed)
        cs = data.conditions(split, config.model.c_dim) if config.model.c_dim else None
        out = {"run_dir": self.run_dir, "model": config.model.model, "data": data.source, "split": split}
        out.update(evaluate(model, norm.x(xs), norm.u(us), norm.log_det_per_step, config.train.eval_batch_size,
                            iw_samples=iw_samples, device=model.device, cs=cs, x_log_std=norm.log_std))
        if config.kind == "categorical":  # text: the figures are nats per token (<eos> included)
            out.update(vocab_size=len(config.vocab), log_vocab_size=float(np.log(len(config.vocab))),
                       perplexity_bound=float(np.exp(out["neg_elbo_per_step"])))
        num_missing = int(sum(np.isnan(x).sum() for x in xs))
        if num_missing:
            out["num_missing_entries"] = num_missing
        if getattr(model, "exact", False):  # the bound is the exact log-likelihood
            out["nll_exact_per_step"] = out["neg_elbo_per_step"]
        if particles:
            from dvae.infer.smc import evaluate_pf

            out["nll_pf_per_step"] = evaluate_pf(model, norm.x(xs), norm.u(us), particles, norm.log_det_per_step,
                                                 max(1, min(config.train.eval_batch_size, 200_000 // particles)),
                                                 cs=cs, x_log_std=norm.log_std)["nll_pf_per_step"]
        if horizon is not None:
            if num_missing or config.kind == "categorical":
                raise ValueError("context, horizon: k-step errors need fully observed continuous data")
            from dvae.eval.names import action_names, obs_names

            train_xs, train_us = data.subset("train")
            m, source = config.model, config.data.source
            names = dict(dim_names=obs_names(data.meta, m.x_dim, source, given=self.obs_names),
                         control_names=action_names(data.meta, m.u_dim, source))
            try:
                out.update(kstep_report(model, norm, xs, us, train_xs, train_us, context, horizon, num_samples,
                                        plot_dir=plots, cs=cs, **names))
            except ValueError as e:  # e.g. no sequence as long as context + horizon
                raise DataError(f"{data.source}: split {split}: {e}") from None
        return out

    def score(self, data=None, split: str = "test", iw_samples: int = 0, quantile: float = 0.99, *,
              seed: int = 0, missing: Optional[bool] = None, actions=None) -> dict:
        """Anomaly scores per sequence and per step with a threshold (``dvae score``'s keys):
        ``threshold`` is the ``quantile`` of ``neg_elbo_per_step`` over the run's validation split (of
        ``data`` itself when it is None: the run's own, read with ``missing``)."""
        import pyro

        from dvae.infer.scores import sequence_scores, threshold_from

        if not 0 < quantile < 1:
            raise ValueError(f"quantile: expected a number strictly between 0 and 1, got {quantile}")
        if iw_samples < 0:
            raise ValueError(f"iw_samples: expected >= 0, got {iw_samples}")
        if split not in SPLITS:
            raise ValueError(f"split: expected train, valid, test or all, got {split!r}")
        norm, c_dim = self.normalizer, self.config.model.c_dim
        scored = self._data_for(data, actions, missing)
        idx = scored.indices(split)
        xs, us = scored.subset(split)
        check_sample_size("iw_samples", iw_samples, self.config.model, xs, 64)
        pyro.set_rng_seed(seed)
        cs = scored.conditions(split, c_dim) if c_dim else None
        scores = sequence_scores(self.model, norm.x(xs), norm.u(us), norm.log_det_per_step, iw_samples, cs=cs,
                                 x_log_std=norm.log_std)
        reference = scored if data is None else self.data  # the threshold comes from the run's own validation split
        vx, vu = reference.subset("valid")
        vc = reference.conditions("valid", c_dim) if c_dim else None
        pyro.set_rng_seed(seed)  # the same draws as the scores above, where they score the same sequences
        valid = sequence_scores(self.model, norm.x(vx), norm.u(vu), norm.log_det_per_step, cs=vc, x_log_std=norm.log_std)
        threshold = threshold_from(valid, quantile)
        step_threshold = float(np.quantile(np.concatenate([s["per_step"] for s in valid]), quantile))
        sequences = [{"index": i, **s, "anomalous": s["neg_elbo_per_step"] > threshold} for i, s in zip(idx, scores)]
        return {"run_dir": self.run_dir, "data": scored.source, "split": split, "threshold": threshold,
                "threshold_key": "neg_elbo_per_step", "quantile": quantile, "step_threshold": step_threshold,
                "sequences": sequences}
