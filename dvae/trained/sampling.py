"""Run's draws from the model: :meth:`Run.predict` (a :class:`~dvae.forecast.Forecast`),
:meth:`Run.generate` (``dvae generate``), :meth:`Run.impute` (``dvae impute``), and the posterior over
the latent path, :meth:`Run.filter` and :meth:`Run.smooth`; everything in data units."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from dvae.arrays import check_dims, check_sample_size, is_sequence_list, steps_last, to_numpy
from dvae.forecast import Forecast


class Sampling:
    """The methods of :class:`dvae.trained.Run` that draw from the model or its guide."""

    def predict(self, obs, actions=None, future_actions=None, num_samples: int = 100, *,
                horizon: Optional[int] = None, seed: Optional[int] = None) -> Forecast:
        """Forecast x_C .. x_{C+H-1} after the observed x_0 .. x_{C-1}.

        ``obs`` (C, x_dim) or a batch (B, C, x_dim); ``actions`` the C-1 controls between them
        (C-1, u_dim) or (B, C-1, u_dim) (int for discrete actions); ``future_actions`` the H controls
        u_{C-1} .. u_{C+H-2} that drive the predictions (uncontrolled models: ``horizon=H`` instead).
        Returns a :class:`Forecast` (data units) of ``num_samples`` sampled futures.
        """
        import torch

        self._no_condition("predict")
        x, batched = self._x(obs, "obs", allow_nan=True)  # (B, C, x_dim)
        B, C = x.shape[:2]
        if num_samples < 1:
            raise ValueError(f"num_samples: expected >= 1, got {num_samples}")
        if self.config.model.u_dim:
            if future_actions is None:
                raise ValueError(f"future_actions: expected (H, {self.config.model.u_dim}) or (B, H, "
                                 f"{self.config.model.u_dim}) controls u_{{C-1}}..u_{{C+H-2}} (the model takes "
                                 "controls), got None")
            fa = to_numpy(future_actions, "future_actions", "controls")
            H = fa.shape[-1] if steps_last(fa, self.config.model.u_dim) else fa.shape[-2] if fa.ndim >= 2 else 0
            if horizon is not None and horizon != H:
                raise ValueError(f"horizon: expected {H} (the number of future_actions) or None, got {horizon}")
            u_fut = self._u(future_actions, "future_actions", B, H)  # (B, H, u_dim)
            u_ctx = self._u(actions, "actions", B, C - 1, required=C > 1)  # (B, C-1, u_dim)
            u = np.concatenate([u_ctx, u_fut[:, :1]], 1)  # (B, C, u_dim): u_{C-1} as the data layout has it
        else:
            self._u(actions, "actions", B, C - 1), self._u(future_actions, "future_actions", B, 0)
            if horizon is None or int(horizon) < 1:
                raise ValueError(f"horizon: expected the number of steps to predict (>= 1) for a model without "
                                 f"controls, got {horizon}")
            H, u, u_fut = int(horizon), None, None
        self._seed(seed)
        batch = self._batch(x, u)
        u_f = None if u_fut is None else torch.from_numpy(np.stack(self.normalizer.u(list(u_fut)))).to(self.model.device)
        self.model.eval()
        out = self.model.predict(batch, u_f, H, num_samples)
        samples = self.normalizer.x_inverse(out["x"]).cpu().numpy()  # (S, B, H, x_dim)
        mean = self.normalizer.x_inverse(out["x_mean"]).mean(0).cpu().numpy()  # (B, H, x_dim): the mixture's mean
        if not batched:
            samples, mean, x = samples[:, 0], mean[0], x[0]
            u_fut = None if u_fut is None else u_fut[0]
        return Forecast(mean, samples, x, u_fut, self.obs_names)

    def generate(self, num_steps: int = 50, num_samples: int = 4, actions=None, *, seed: Optional[int] = None) -> dict:
        """Sequences from the prior (``dvae generate``'s keys): ``x``, ``x_mean`` (num_samples, num_steps,
        x_dim) in data units; a text run's ``sequences``, ``texts`` and ``ended``. ``actions``
        (num_steps, u_dim) or (num_samples, num_steps, u_dim), data units (default: zeros)."""
        import torch

        self._no_condition("generate")
        for name, value in (("num_steps", num_steps), ("num_samples", num_samples)):
            if value < 1:
                raise ValueError(f"{name}: expected >= 1, got {value}")
        config, norm = self.config, self.normalizer
        check_sample_size("num_samples", num_samples, config.model, None, 1, num_steps)
        u = None
        if config.model.u_dim:
            u_np = self._u(actions, "actions", num_samples, num_steps, required=False)  # (S, T, u_dim)
            u = torch.from_numpy(np.stack(norm.u(list(u_np))))
        self._seed(seed)
        self.model.eval()
        g = self.model.generate(num_steps, u=u, num_samples=num_samples)
        out = {"run_dir": self.run_dir, "model": config.model.model, "kind": config.kind, "num_samples": num_samples,
               "num_steps": num_steps, "seed": seed}
        if config.model.u_dim and actions is None:
            out["controls"] = "zero (data units)"
        if config.kind == "categorical":
            from dvae.data.text import EOS_ID, Vocabulary, join

            vocab = Vocabulary(config.vocab)
            ids = g["x"].argmax(-1).cpu().numpy()  # (S, T): the one-hot draws as token ids
            out["sequences"] = [vocab.decode(row) for row in ids]
            out["texts"] = [join(seq, config.data.tokens) for seq in out["sequences"]]
            out["ended"] = [bool((row == EOS_ID).any()) for row in ids]  # reached <eos> within num_steps
        else:
            out["x"] = norm.x_inverse(g["x"]).cpu().numpy()  # (S, T, x_dim), data units
            out["x_mean"] = norm.x_inverse(g["x_mean"]).cpu().numpy()
        return out

    def impute(self, obs, actions=None, num_samples: int = 100, *, seed: Optional[int] = None) -> dict:
        """Fill the missing (NaN) entries of ``obs`` (L, x_dim) or (B, L, x_dim) from the posterior
        predictive: ``x`` (observed entries kept, missing ones the predictive mean), ``mean``, ``lo``,
        ``hi`` (its 5% and 95% quantiles), each shaped as ``obs``, data units. ``actions`` (L-1, u_dim).
        Ragged episodes: ``obs`` a list of (L_i, x_dim) arrays with ``actions`` a list of (L_i-1, u_dim),
        or a ``SequenceData``; then each key holds a list of (L_i, x_dim) arrays."""
        from dvae.data import SequenceData
        from dvae.eval.impute import impute_sequences

        self._no_condition("impute")
        if self.config.kind != "continuous":
            raise ValueError("impute needs a run trained on continuous data")
        if self.config.data.missing != "nan":  # its networks never saw a missing entry
            raise ValueError(f"{self.run_dir or 'this run'}: trained without missing='nan' (the command line's "
                             "--missing nan), so its networks never saw a missing entry: impute needs a run "
                             "trained with it")
        if num_samples < 1:
            raise ValueError(f"num_samples: expected >= 1, got {num_samples}")
        ragged = isinstance(obs, SequenceData) or is_sequence_list(obs)
        if isinstance(obs, SequenceData):
            if actions is not None:
                raise ValueError(f"actions: expected None with a SequenceData (it holds its own controls), got "
                                 f"{type(actions).__name__}")
            check_dims(obs, self.config.model, "obs")
            xs, us = list(obs.xs), obs.us
        elif ragged:
            xs, us = self._episodes(obs, actions)
        else:
            x, batched = self._x(obs, "obs", allow_nan=True)
            B, L = x.shape[:2]
            u = self._u(actions, "actions", B, L - 1, required=L > 1)
            xs = list(x)
            us = None if u is None else list(np.concatenate([u, np.zeros((B, 1, u.shape[-1]), np.float32)], 1))
        check_sample_size("num_samples", num_samples, self.config.model, xs, 1)
        self._seed(seed)
        filled = impute_sequences(self.model, self.normalizer, xs, us, num_samples, self.config.train.eval_batch_size)
        if ragged:
            return {k: [r[k] for r in filled] for k in ("x", "mean", "lo", "hi")}
        out = {k: np.stack([r[k] for r in filled]) for k in ("x", "mean", "lo", "hi")}  # (B, L, x_dim)
        return out if batched else {k: v[0] for k, v in out.items()}

    def _episodes(self, obs, actions):
        """Ragged episodes: lists of (L_i, x_dim) observations (NaN: missing) and (L_i - 1, u_dim)
        controls -> (xs, us), us (L_i, u_dim) with the unknown last control zero (or None)."""
        if actions is not None and (not isinstance(actions, (list, tuple)) or len(actions) != len(obs)):
            raise ValueError(f"actions: expected a list of {len(obs)} arrays (one per episode of obs), got "
                             f"{type(actions).__name__}")
        xs, us = [], [] if self.config.model.u_dim else None
        for i, o in enumerate(obs):
            x, batched = self._x(o, f"obs[{i}]", allow_nan=True)  # (1, L_i, x_dim)
            if batched:
                raise ValueError(f"obs[{i}]: expected (L_i, x_dim) observations, got shape {np.shape(o)}")
            L = x.shape[1]
            u = self._u(None if actions is None else actions[i], f"actions[{i}]", 1, L - 1, required=L > 1)
            xs.append(x[0])
            if us is not None:
                us.append(np.concatenate([u[0], np.zeros((1, u.shape[-1]), np.float32)], 0))
        return xs, us

    def _latent_samples(self, x, u, num_samples: int):
        """z samples (S, B, T, z_dim) of the guide given standardised x, u."""
        self.model.eval()
        z = self.model.encode(self._batch(x, u), num_samples)["z"]
        if z.dim() != 4:
            raise ValueError(f"{self.config.model.model}: the model has no latent path (one code per sequence); "
                             "filter/smooth need a per-step latent")
        return z

    def smooth(self, obs, actions=None, num_samples: int = 100, *, seed: Optional[int] = None) -> Dict[str, np.ndarray]:
        """The posterior over the latent path given all of ``obs`` (T, x_dim) or (B, T, x_dim), from
        ``num_samples`` guide samples: ``mean`` and ``scale`` (standard deviation) per step, (T, z_dim)
        or (B, T, z_dim). ``actions`` (T-1, u_dim)."""
        x, batched, u = self._latent_inputs(obs, actions)
        self._seed(seed)
        z = self._latent_samples(x, u, num_samples)  # (S, B, T, z_dim)
        out = {"mean": z.mean(0).cpu().numpy(), "scale": z.std(0, unbiased=False).cpu().numpy()}
        return out if batched else {k: v[0] for k, v in out.items()}

    def filter(self, obs, actions=None, num_samples: int = 100, *, seed: Optional[int] = None) -> Dict[str, np.ndarray]:
        """The posterior over z_t given x_0 .. x_t only, for every t: the guide run on each prefix of
        ``obs`` (T, x_dim) or (B, T, x_dim), ``num_samples`` samples of its last step; ``mean`` and
        ``scale`` per step, (T, z_dim) or (B, T, z_dim)."""
        x, batched, u = self._latent_inputs(obs, actions)
        self._seed(seed)
        T = x.shape[1]
        steps = []
        for t in range(T):
            z = self._latent_samples(x[:, :t + 1], None if u is None else u[:, :t + 1], num_samples)[:, :, t]
            steps.append(z)  # (S, B, z_dim)
        import torch

        z = torch.stack(steps, 2)  # (S, B, T, z_dim)
        out = {"mean": z.mean(0).cpu().numpy(), "scale": z.std(0, unbiased=False).cpu().numpy()}
        return out if batched else {k: v[0] for k, v in out.items()}

    def _latent_inputs(self, obs, actions):
        self._no_condition("filter/smooth")
        x, batched = self._x(obs, "obs", allow_nan=True)
        B, T = x.shape[:2]
        u = self._u(actions, "actions", B, T - 1, required=T > 1)
        if u is not None:  # (B, T, u_dim): the last control is unknown (and unused)
            u = np.concatenate([u, np.zeros((B, 1, u.shape[-1]), np.float32)], 1)
        return x, batched, u
