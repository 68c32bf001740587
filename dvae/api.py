"""The Python API: ``dvae.fit``, ``dvae.load``, :class:`Run` and :class:`Forecast`.

    import dvae
    run = dvae.fit(obs, actions, model="dmm", epochs=50, seed=0)   # obs (N, T+1, x_dim), actions (N, T, u_dim)
    forecast = run.predict(obs[0, :20], actions[0, :19], future_actions=actions[0, 19:49])
    forecast.mean, forecast.quantile(0.05), forecast.plot(truth=obs[0, 20:50])

Everything a :class:`Run` takes and returns is in the data's units (the normaliser is applied and
undone inside), and where a command-line verb exists its method returns the verb's JSON keys
(``evaluate`` is ``dvae eval``, ``score`` is ``dvae score``, ``plan`` is ``dvae plan``, ``generate``
is ``dvae generate``). A run fitted with ``out=`` is a run directory exactly as ``dvae train --out``
writes it; ``dvae.load(run_dir)`` reads one back (the best parameters, as ``best.pt``).

Data is a SOURCE as on the command line (a path or built-in name), a ``SequenceData``, or arrays
(numpy or torch): (N, T+1, x_dim) observations, a list of per-episode (T_i+1, x_dim) arrays for
ragged episodes, or one (T+1, x_dim) trajectory; actions (N, T, u_dim) float or (N, T) int
(discrete: one-hot, as ``dvae collect`` data is read), or the matching lists. Bad input raises one
ValueError naming the argument, the expected and the given shape or type.
"""

from __future__ import annotations

import copy
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from dvae.fitting import ARRAYS_SOURCE, DATA_FILE

__all__ = ["fit", "load", "Run", "Forecast"]

ENV_OBS_NAMES = {"Pendulum-v1": ["cos theta", "sin theta", "theta dot (rad/s)"]}
"""The names of the observation dimensions of the envs whose observations are known."""


# --- input checks -----------------------------------------------------------------------------------
def _numpy(value, name: str, what: str) -> np.ndarray:
    """``value`` (numpy, torch, nested lists) as a real numeric numpy array, or ValueError naming ``name``."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise ValueError(f"{name}: expected {what}, got {type(value).__name__} that is no array ({e})") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise ValueError(f"{name}: expected {what} of real numbers, got {type(value).__name__} of dtype {arr.dtype}")
    return arr


def _shape_error(name: str, what: str, arr) -> ValueError:
    return ValueError(f"{name}: expected {what}, got shape {tuple(np.shape(arr))}")


def _steps_last(arr: np.ndarray, u_dim: int) -> bool:
    """Whether controls ``arr`` have the steps on their last axis: integer (discrete) actions (steps,) or
    (B, steps), or a one-dimensional control given as (steps,)."""
    if np.issubdtype(arr.dtype, np.integer):
        return arr.ndim == 1 or (arr.ndim == 2 and not (u_dim == 1 and arr.shape[-1] == 1))
    return arr.ndim == 1 and u_dim == 1


def _is_sequence_list(value) -> bool:
    """A list/tuple whose items are arrays (ragged episodes), as opposed to nested lists of numbers."""
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(
        hasattr(v, "shape") or (isinstance(v, (list, tuple)) and len(v) > 0 and isinstance(v[0], (list, tuple)))
        for v in value)


def _episodes(data, actions):
    """Observations and actions as (obs (N, T+1, x_dim) padded, actions (N, T[, u_dim]) or None,
    lengths (N,)) from any of the array forms ``fit`` takes."""
    what = "observations (N, T+1, x_dim), a list of (T_i+1, x_dim) arrays or one (T+1, x_dim) trajectory"
    if _is_sequence_list(data):
        xs = [_numpy(x, f"data[{i}]", "a (T_i+1, x_dim) array") for i, x in enumerate(data)]
        for i, x in enumerate(xs):
            if x.ndim != 2 or len(x) == 0:
                raise _shape_error(f"data[{i}]", "a (T_i+1, x_dim) array with T_i+1 >= 1", x)
            if x.shape[1] != xs[0].shape[1]:
                raise ValueError(f"data[{i}]: expected x_dim {xs[0].shape[1]} as data[0], got shape {x.shape}")
        us = None
        if actions is not None:
            if not isinstance(actions, (list, tuple)) or len(actions) != len(xs):
                raise ValueError(f"actions: expected a list of {len(xs)} arrays (one per episode of data), got "
                                 f"{type(actions).__name__}" + (f" of {len(actions)}" if hasattr(actions, '__len__') else ""))
            us = [_numpy(u, f"actions[{i}]", "a (T_i, u_dim) or (T_i,) int array") for i, u in enumerate(actions)]
            for i, (x, u) in enumerate(zip(xs, us)):
                if u.ndim not in (1, 2) or len(u) != len(x) - 1 or (u.ndim == 1 and not np.issubdtype(u.dtype, np.integer)):
                    raise _shape_error(f"actions[{i}]", f"({len(x) - 1}, u_dim) float or ({len(x) - 1},) int "
                                       f"(T_i = {len(x) - 1} actions for data[{i}]'s {len(x)} observations)", u)
                if u.ndim == 2 and u.shape[1] != us[0].shape[1]:
                    raise ValueError(f"actions[{i}]: expected u_dim {us[0].shape[1]} as actions[0], got shape {u.shape}")
        N, L = len(xs), max(len(x) for x in xs)
        obs = np.zeros((N, L, xs[0].shape[1]), np.float64)  # (N, T+1, x_dim), padded
        for i, x in enumerate(xs):
            obs[i, :len(x)] = x
        act = None
        if us is not None:
            act = np.zeros((N, L - 1) + us[0].shape[1:], us[0].dtype)  # (N, T[, u_dim]), padded
            for i, u in enumerate(us):
                act[i, :len(u)] = u
        return obs, act, np.array([len(x) - 1 for x in xs], np.int64)
    obs = _numpy(data, "data", what)
    act = None if actions is None else _numpy(actions, "actions", "(N, T, u_dim) float or (N, T) int actions")
    if obs.ndim == 2:  # one trajectory (T+1, x_dim)
        obs = obs[None]
        if act is not None:
            if act.ndim == 1 and not np.issubdtype(act.dtype, np.integer):
                act = act[:, None]  # (T,) of a one-dimensional control: (T, 1)
            if act.ndim not in (1, 2):
                raise _shape_error("actions", f"({obs.shape[1] - 1}, u_dim) float or ({obs.shape[1] - 1},) int for "
                                   f"one trajectory of {obs.shape[1]} observations", act)
            act = act[None]
    if obs.ndim not in (3, 4):
        raise _shape_error("data", what, obs)
    if act is not None:
        T = obs.shape[1] - 1
        if act.ndim not in (2, 3) or act.shape[:2] != (obs.shape[0], T) or \
                (act.ndim == 2 and not np.issubdtype(act.dtype, np.integer)):
            raise _shape_error("actions", f"({obs.shape[0]}, {T}, u_dim) float or ({obs.shape[0]}, {T}) int "
                               f"(T = {T} actions between data's {T + 1} observations)", act)
    return obs, act, None


def as_data(data, actions=None, missing: bool = False):
    """``data`` (and ``actions``) as a ``SequenceData``: a SequenceData as it is, arrays through
    ``from_trajectories`` (source ``<arrays>``, the default splits). A SOURCE string is not read here."""
    from dvae.data import SequenceData, from_trajectories

    if isinstance(data, SequenceData):
        if actions is not None:
            raise ValueError("actions: expected None with a SequenceData (it holds its own controls), got "
                             f"{type(actions).__name__}")
        return data
    if data is None:
        raise ValueError("data: expected a SOURCE, a SequenceData or observations, got None")
    from dvae.errors import DataError

    obs, act, lengths = _episodes(data, actions)
    try:
        return from_trajectories(obs, act, lengths, path=ARRAYS_SOURCE, missing=missing)
    except DataError as e:  # the loader names the file's fields; here they are the arguments
        msg = str(e).replace(f"{ARRAYS_SOURCE}: obs", "data: obs").replace(f"{ARRAYS_SOURCE}: actions", "actions:")
        raise DataError(msg.replace("--missing nan", 'missing="nan"')) from None


def _source(data) -> Optional[str]:
    """The SOURCE string of ``data`` when it is one (a str or a path), else None."""
    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    return None


def fit(data, actions=None, *, model: str = "dmm", out=None, obs_names: Optional[Sequence[str]] = None,
        **options) -> "Run":
    """Fit a model, as ``dvae train`` does; returns the :class:`Run` with the BEST parameters.

    ``data``: a SOURCE as on the command line (``"pendulum"``, a path), a ``SequenceData``, or arrays
    (see the module's docstring) with ``actions`` matching. ``model``: dmm, vrnn, vrae, lgssm or vae.
    ``out``: a run directory to write exactly as ``dvae train --out`` does (None: nothing is written;
    :meth:`Run.save` writes it later). ``options``: the ``dvae train`` flags with underscores
    (``epochs``, ``time_limit``, ``seed``, ``device``, ``z_dim``, ``guide``, ``batch_size``, ...);
    ``seed`` seeds everything (parameters, batch order, samples). ``obs_names``: a name per observation
    dimension, for plots (default: from the data, e.g. a CSV header, or the env).
    """
    from dvae.fitting import train, train_options

    source = _source(data)
    if source is not None and actions is not None:
        raise ValueError(f"actions: expected None with a SOURCE ({source!r} holds its own controls), got "
                         f"{type(actions).__name__}")
    a = train_options(model=model, data=source or ARRAYS_SOURCE, out=None if out is None else os.fspath(out), **options)
    loaded = None
    if source is None:
        loaded = as_data(data, actions, missing=a.missing == "nan")
        if not _readable_source(loaded.source):
            loaded = copy.copy(loaded)
            loaded.source = ARRAYS_SOURCE  # written into the run directory when it has one
        a.data = loaded.source
    def check_names(x_dim):
        if obs_names is not None and (isinstance(obs_names, str) or len(obs_names) != x_dim):
            raise ValueError(f"obs_names: expected {x_dim} names (one per observation dimension), got {obs_names!r}")

    if loaded is not None:
        check_names(loaded.x_dim)  # before any training
        if obs_names is not None:  # the training plots name the dimensions too
            loaded = copy.copy(loaded)
            loaded.meta = {**loaded.meta, "obs_names": ",".join(str(n) for n in obs_names)}
    result = train(a, loaded)
    check_names(result.config.model.x_dim)
    if loaded is not None and loaded.source != result.config.data.source:  # arrays written as RUN/data.npz
        loaded.source = result.config.data.source
    checkpoint = None if a.out is not None else result.checkpoint
    run = Run(result.model, result.config, list(result.trainer.rows), run_dir=a.out, data=result.data,
              summary=result.summary, checkpoint=checkpoint, plots=not a.no_plots)
    if obs_names is not None:
        run.obs_names = [str(n) for n in obs_names]
    return run


def _readable_source(source: str) -> bool:
    from dvae.data.sources import BUILTIN_SOURCES

    path = source[len("text:"):] if source.startswith("text:") else source
    return source in BUILTIN_SOURCES or os.path.exists(path)


def load(run_dir, device: str = "auto") -> "Run":
    """The run in ``run_dir`` (written by ``dvae train`` or ``dvae.fit(..., out=...)``), with its best
    parameters (``best.pt``)."""
    from dvae.device import resolve_device
    from dvae.run import load_model, read_metrics

    run_dir = os.fspath(run_dir)
    model, config = load_model(run_dir, resolve_device(device))
    return Run(model, config, read_metrics(run_dir), run_dir=run_dir)


# --- the run ----------------------------------------------------------------------------------------
class Run:
    """A trained model with its configuration, normaliser and metrics; every method in data units.

    Attributes: ``config`` (``RunConfig``), ``model`` (the model, best parameters), ``normalizer``,
    ``metrics`` (the per-epoch rows of metrics.jsonl), ``run_dir`` (None until saved), ``summary``
    (the train summary of a fit in this process, else None).
    """

    def __init__(self, model, config, metrics: List[dict], run_dir: Optional[str] = None, data=None,
                 summary: Optional[dict] = None, checkpoint: Optional[dict] = None, plots: bool = True):
        self.model, self.config, self.metrics, self.run_dir = model, config, metrics, run_dir
        self.plots = plots  # save() writes the training plots
        self.summary = summary
        self._data = data
        self._checkpoint = checkpoint  # a fit without out=: what checkpoint.pt would hold (resumable)
        self.obs_names = self._known_names()
        """A name per observation dimension (plots), or None: from the data (a CSV header's
        ``obs_names``) or the env it came from."""

    def __repr__(self) -> str:
        m = self.config.model
        best = min((r["valid_neg_elbo_per_step"] for r in self.metrics), default=float("nan"))
        return (f"Run(model={m.model!r}, x_dim={m.x_dim}, u_dim={m.u_dim}, z_dim={m.z_dim}, epochs={len(self.metrics)}, "
                f"best_valid_neg_elbo_per_step={best:.4g}, run_dir={self.run_dir!r})")

    def _known_names(self) -> Optional[List[str]]:
        meta = {} if self._data is None else self._data.meta
        names = meta.get("obs_names")
        if isinstance(names, str) and len(names.split(",")) == self.config.model.x_dim:
            return names.split(",")
        env_id = meta.get("env_id") or ("Pendulum-v1" if self.config.data.source == "pendulum" else None)
        return ENV_OBS_NAMES.get(env_id) if self.config.kind == "continuous" else None

    @property
    def normalizer(self):
        return self.config.normalizer

    @property
    def data(self):
        """The data the run was trained on (read from its source when not in memory)."""
        if self._data is None:
            from dvae.run import load_data

            self._data = load_data(self.config)
        return self._data

    # --- saving -------------------------------------------------------------------------------------
    def save(self, run_dir) -> str:
        """Write the run directory as ``dvae train --out run_dir`` would have (config.json, checkpoint.pt,
        best.pt, metrics.jsonl, the plots unless trained with ``no_plots``); data handed over as arrays
        goes in as ``data.npz``. Returns ``run_dir``; the Run reads from it from then on."""
        from dvae.fitting import trajectory_arrays, write_train_plots
        from dvae.rundir import RunLock, check_new_run_dir
        from dvae.run import BEST, CHECKPOINT, create_run, load_torch, record_data, save_torch, write_config, write_metrics

        from dvae.errors import RunDirError

        run_dir = os.fspath(run_dir)
        try:
            check_new_run_dir(run_dir)  # a run, or any other non-empty directory, is refused
        except RunDirError as e:
            raise ValueError(f"run_dir: {e}") from None
        if self._checkpoint is None and self.run_dir is None:
            raise ValueError("run_dir: this Run has no training state to save (it was neither fitted here nor loaded)")
        config = copy.deepcopy(self.config)
        data = self._data
        files = {}
        if config.data.source == ARRAYS_SOURCE:
            arrays = trajectory_arrays(data)
            files[DATA_FILE] = lambda f: np.savez(f, **arrays)
        elif self.run_dir is not None and (os.path.abspath(config.data.source)
                                           == os.path.abspath(os.path.join(self.run_dir, DATA_FILE))):
            with open(config.data.source, "rb") as f:  # the arrays travel with the run
                files[DATA_FILE] = f.read()
        else:
            config.data = record_data(config.data)  # the absolute source and its fingerprint
        if self._checkpoint is not None:
            checkpoint = self._checkpoint
        else:  # a loaded run: its own checkpoint, as it is
            checkpoint = load_torch(os.path.join(self.run_dir, CHECKPOINT))
        with RunLock() as lock:  # config.json, checkpoint.pt and data.npz appear at once
            create_run(run_dir, config, checkpoint, lock, files)
            if files:
                config.data.source = os.path.abspath(os.path.join(run_dir, DATA_FILE))
                config.data = record_data(config.data)
                write_config(run_dir, config)
                if data is not None:
                    data.source = config.data.source
        write_metrics(run_dir, self.metrics)
        best_epoch = min(self.metrics, key=lambda r: r["valid_neg_elbo_per_step"])["epoch"] if self.metrics else 0
        save_torch(os.path.join(run_dir, BEST), {"model": copy.deepcopy(self.model.state_dict()), "epoch": best_epoch})
        if self.plots:
            write_train_plots(run_dir, self.model, config, self.data, self.normalizer, self.metrics)
        self.config, self.run_dir, self._checkpoint = config, run_dir, None
        return run_dir

    # --- helpers --------------------------------------------------------------------------------------
    def _seed(self, seed: Optional[int]) -> None:
        if seed is not None:
            import pyro

            pyro.set_rng_seed(seed)

    def _data_for(self, data, actions=None, missing: Optional[bool] = None):
        """``data`` of a method: None (the run's own), a SOURCE (read as the run reads its data), a
        SequenceData or arrays (with ``actions``); its dimensions checked against the model."""
        from dvae.run import load_data

        if (data is None or _source(data) is not None) and actions is not None:
            raise ValueError("actions: expected None unless data is given as arrays, got "
                             f"{type(actions).__name__}")
        if data is None:
            out = self.data if missing is None else load_data(self.config, None, missing)
        elif _source(data) is not None:
            out = load_data(self.config, _source(data), missing)
        else:
            out = as_data(data, actions, missing=self.config.data.missing == "nan" if missing is None else missing)
        m = self.config.model
        if out.x_dim != m.x_dim or out.u_dim != m.u_dim:
            raise ValueError(f"data: expected x_dim {m.x_dim}, u_dim {m.u_dim} (the run's model), got x_dim "
                             f"{out.x_dim}, u_dim {out.u_dim} ({out.source})")
        return out

    def _x(self, obs, name: str, allow_nan: bool = False):
        """Observations (C, x_dim) or (B, C, x_dim) -> ((B, C, x_dim) float32 data units, batched?)."""
        x_dim = self.config.model.x_dim
        arr = _numpy(obs, name, f"observations (C, x_dim = {x_dim}) or (B, C, x_dim)")
        batched = arr.ndim == 3
        if arr.ndim == 1 and x_dim == 1:
            arr = arr[:, None]
        if arr.ndim not in (2, 3) or arr.shape[-1] != x_dim or arr.shape[-2] < 1:
            raise _shape_error(name, f"(C, {x_dim}) or (B, C, {x_dim}) observations (x_dim = {x_dim})", arr)
        arr = arr.astype(np.float32)
        bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
        if bad.any():
            raise ValueError(f"{name}: expected finite values{' (NaN: missing)' if allow_nan else ''}, got "
                             f"{arr[tuple(np.argwhere(bad)[0])]} at index {tuple(int(i) for i in np.argwhere(bad)[0])}")
        return (arr if batched else arr[None]), batched

    def _u(self, actions, name: str, B: int, steps: int, required: bool = True):
        """Controls (steps, u_dim) / (B, steps, u_dim) float or (steps,) / (B, steps) int (one-hot) ->
        (B, steps, u_dim) float32 data units, or None for an uncontrolled model."""
        u_dim = self.config.model.u_dim
        if not u_dim:
            if actions is not None and np.size(_numpy(actions, name, "actions")):
                raise ValueError(f"{name}: expected None (the model takes no controls, u_dim = 0), got "
                                 f"shape {tuple(np.shape(actions))}")
            return None
        want = f"({steps}, {u_dim}) or ({B}, {steps}, {u_dim}) float, or ({steps},) / ({B}, {steps}) int (discrete)"
        if actions is None:
            if not required or steps == 0:
                return np.zeros((B, steps, u_dim), np.float32)
            raise ValueError(f"{name}: expected {want} (the model takes controls, u_dim = {u_dim}), got None")
        arr = _numpy(actions, name, want)
        if arr.ndim == 1 and u_dim == 1 and not np.issubdtype(arr.dtype, np.integer):
            arr = arr[:, None]  # (steps,) of a one-dimensional control: (steps, 1)
        if _steps_last(arr, u_dim):  # discrete actions: integers (steps,) or (B, steps)
            if arr.size and (arr.min() < 0 or arr.max() >= u_dim):
                raise ValueError(f"{name}: expected discrete actions in 0..{u_dim - 1}, got {int(arr.min())}..{int(arr.max())}")
            arr = np.eye(u_dim, dtype=np.float32)[arr]  # one-hot (.., u_dim)
        if arr.ndim == 2:
            arr = np.broadcast_to(arr[None], (B,) + arr.shape)
        if arr.ndim != 3 or arr.shape != (B, steps, u_dim):
            raise _shape_error(name, want, actions)
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: expected finite values, got {arr[~np.isfinite(arr)][0]}")
        return arr

    def _batch(self, x, u):
        """A SequenceBatch of standardised x (B, C, x_dim) and u (B, C, u_dim) or None, on the model's device."""
        import torch

        from dvae.data import collate

        norm = self.normalizer
        xs = norm.x(list(x))
        us = None if u is None else norm.u(list(u))
        return collate([torch.from_numpy(v) for v in xs],
                       None if us is None else [torch.from_numpy(v) for v in us]).to(self.model.device)

    def _no_condition(self, what: str) -> None:
        if self.config.model.c_dim:
            raise ValueError(f"{what}: conditional models (c_dim > 0) are not supported from Python yet")

    # --- the verbs ------------------------------------------------------------------------------------
    def evaluate(self, data=None, split: str = "test", iw_samples: Optional[int] = None, context: Optional[int] = None,
                 horizon: Optional[int] = None, particles: Optional[int] = None, *, num_samples: int = 64,
                 seed: int = 0, plots: Optional[str] = None, missing: Optional[bool] = None, actions=None) -> dict:
        """Bounds per time step of a split (and with ``context`` and ``horizon``, k-step open-loop errors):
        the numbers and keys of ``dvae eval`` on the same run, data and ``seed``. ``data``: None (the
        run's own), a SOURCE, a SequenceData or arrays with ``actions`` (their default splits:
        ``split="all"`` for every sequence)."""
        import pyro

        from dvae.errors import DataError
        from dvae.eval import kstep_report
        from dvae.infer.evaluation import evaluate

        model, config, norm = self.model, self.config, self.normalizer
        iw_samples, particles = iw_samples or 0, particles or 0
        if split not in ("train", "valid", "test", "all"):
            raise ValueError(f"split: expected train, valid, test or all, got {split!r}")
        if iw_samples < 0 or particles < 0:
            raise ValueError(f"iw_samples, particles: expected >= 0, got {iw_samples}, {particles}")
        if (context is None) != (horizon is None):
            raise ValueError(f"context, horizon: expected both or neither, got {context}, {horizon}")
        data = self._data_for(data, actions, missing)
        xs, us = data.subset(split)
        if not xs:
            raise ValueError(f"{data.source}: split {split!r} is empty")
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
            if context < 1 or horizon < 1:
                raise ValueError(f"context, horizon: expected at least 1, got {context}, {horizon}")
            if num_missing or config.kind == "categorical":
                raise ValueError("context, horizon: k-step errors need fully observed continuous data")
            train_xs, train_us = data.subset("train")
            try:
                from dvae.eval.names import action_names

                out.update(kstep_report(model, norm, xs, us, train_xs, train_us, context, horizon, num_samples,
                                        plot_dir=plots, cs=cs, dim_names=self.obs_names, control_names=action_names(
                                            data.meta, config.model.u_dim, config.data.source)))
            except ValueError as e:  # e.g. no sequence as long as context + horizon
                raise DataError(f"{data.source}: split {split}: {e}") from None
        return out

    def predict(self, obs, actions=None, future_actions=None, num_samples: int = 100, *,
                horizon: Optional[int] = None, seed: Optional[int] = None) -> "Forecast":
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
            fa = _numpy(future_actions, "future_actions", "controls")
            H = fa.shape[-1] if _steps_last(fa, self.config.model.u_dim) else fa.shape[-2] if fa.ndim >= 2 else 0
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
        if num_steps < 1 or num_samples < 1:
            raise ValueError(f"num_steps, num_samples: expected >= 1, got {num_steps}, {num_samples}")
        config, norm = self.config, self.normalizer
        u = None
        if config.model.u_dim:
            u_np = self._u(actions, "actions", num_samples, num_steps, required=False)  # (S, T, u_dim)
            u = torch.from_numpy(np.stack(norm.u(list(u_np))))
        self._seed(seed)
        self.model.eval()
        g = self.model.generate(num_steps, u=u, num_samples=num_samples)
        out = {"model": config.model.model, "kind": config.kind, "num_samples": num_samples, "num_steps": num_steps}
        if config.model.u_dim and actions is None:
            out["controls"] = "zero (data units)"
        if config.kind == "categorical":
            from dvae.data.text import EOS_ID, Vocabulary, join

            vocab = Vocabulary(config.vocab)
            ids = g["x"].argmax(-1).cpu().numpy()  # (S, T): the one-hot draws as token ids
            out["sequences"] = [vocab.decode(row) for row in ids]
            out["texts"] = [join(seq, config.data.tokens) for seq in out["sequences"]]
            out["ended"] = [bool((row == EOS_ID).any()) for row in ids]
        else:
            out["x"] = norm.x_inverse(g["x"]).cpu().numpy()  # (S, T, x_dim), data units
            out["x_mean"] = norm.x_inverse(g["x_mean"]).cpu().numpy()
        return out

    def score(self, data=None, split: str = "test", iw_samples: int = 0, quantile: float = 0.99, *,
              seed: int = 0, missing: Optional[bool] = None, actions=None) -> dict:
        """Anomaly scores per sequence and per step with a threshold (``dvae score``'s keys):
        ``threshold`` is the ``quantile`` of ``neg_elbo_per_step`` over the run's validation split."""
        import pyro

        from dvae.infer.scores import sequence_scores, threshold_from

        if not 0 < quantile < 1:
            raise ValueError(f"quantile: expected a number strictly between 0 and 1, got {quantile}")
        if iw_samples < 0:
            raise ValueError(f"iw_samples: expected >= 0, got {iw_samples}")
        norm, c_dim = self.normalizer, self.config.model.c_dim
        scored = self._data_for(data, actions, missing)
        pyro.set_rng_seed(seed)
        idx = scored.indices(split)
        xs, us = scored.subset(split)
        cs = scored.conditions(split, c_dim) if c_dim else None
        scores = sequence_scores(self.model, norm.x(xs), norm.u(us), norm.log_det_per_step, iw_samples, cs=cs,
                                 x_log_std=norm.log_std)
        reference = self.data  # the threshold comes from the run's own validation split
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

    def impute(self, obs, actions=None, num_samples: int = 100, *, seed: Optional[int] = None) -> Dict[str, np.ndarray]:
        """Fill the missing (NaN) entries of ``obs`` (L, x_dim) or (B, L, x_dim) from the posterior
        predictive: ``x`` (observed entries kept, missing ones the predictive mean), ``mean``, ``lo``,
        ``hi`` (its 5% and 95% quantiles), each shaped as ``obs``, data units. ``actions`` (L-1, u_dim)."""
        from dvae.eval.impute import impute_sequences

        self._no_condition("impute")
        if self.config.kind != "continuous":
            raise ValueError("impute needs a run trained on continuous data")
        if self.config.data.missing != "nan":  # as `dvae impute`: its networks never saw a missing entry
            raise ValueError(f"{self.run_dir or 'this run'}: trained without missing='nan', so its networks never saw "
                             "a missing entry: impute needs a run trained with missing='nan'")
        if num_samples < 1:
            raise ValueError(f"num_samples: expected >= 1, got {num_samples}")
        x, batched = self._x(obs, "obs", allow_nan=True)
        B, L = x.shape[:2]
        u = self._u(actions, "actions", B, L - 1, required=L > 1)
        us = None if u is None else list(np.concatenate([u, np.zeros((B, 1, u.shape[-1]), np.float32)], 1))
        self._seed(seed)
        filled = impute_sequences(self.model, self.normalizer, list(x), us, num_samples,
                                  self.config.train.eval_batch_size)
        out = {k: np.stack([r[k] for r in filled]) for k in ("x", "mean", "lo", "hi")}  # (B, L, x_dim)
        return out if batched else {k: v[0] for k, v in out.items()}

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

    # --- world models ---------------------------------------------------------------------------------
    def world_model(self, num_envs: int = 1, sample: bool = True, history=None, *, seed: Optional[int] = None):
        """A :class:`dvae.world_model.WorldModel` of ``num_envs`` imagined rollouts, already reset: from
        the prior, or filtered on ``history`` = (x (C, x_dim), u (C-1, u_dim) or None). Then
        ``step(u)`` takes controls (num_envs, u_dim) and returns observations (num_envs, x_dim), data units."""
        from dvae.world_model import WorldModel

        if num_envs < 1:
            raise ValueError(f"num_envs: expected >= 1, got {num_envs}")
        world = WorldModel(self.model, self.normalizer, sample=sample)
        self._seed(seed)
        if history is None:
            world.reset_prior(num_envs)
        else:
            if not isinstance(history, (tuple, list)) or len(history) != 2:
                raise ValueError(f"history: expected (x (C, x_dim), u (C-1, u_dim) or None), got {type(history).__name__}")
            x, _ = self._x(history[0], "history[0]")
            u = self._u(history[1], "history[1]", 1, x.shape[1] - 1, required=x.shape[1] > 1)
            world.reset(x[0], None if u is None else u[0], num_samples=num_envs)
        return world

    def env(self, env_id: Optional[str] = None, **kwargs):
        """A Gymnasium env of imagined dynamics: ``gym.make("dvae/WorldModel-v0", run=self, env_id=...)``
        (``env_id``: the real env whose action space and reward it takes, e.g. Pendulum-v1)."""
        import gymnasium as gym

        import envs  # noqa: F401  (registers dvae/WorldModel-v0)

        return gym.make("dvae/WorldModel-v0", run=self, env_id=env_id, **kwargs)

    def plan(self, env_id: str, episodes: int = 3, planner: str = "cem", horizon: int = 25, num_samples: int = 300,
             iterations: int = 4, history: int = 16, max_steps: int = 200, baselines: bool = True, seed: int = 0,
             save_episodes: Optional[str] = None) -> dict:
        """Model-predictive control in the real env ``env_id`` with this model (``dvae plan``'s keys):
        ``mean_return``, ``returns``, ``baselines`` (random, true_model), ``normalized_return``."""
        import time

        from dvae.control import PlannerConfig
        from dvae.planning import model_policy, random_policy, run_episodes, true_policy
        from envs.rewards import reward_fn
        from envs.simulators import true_returns

        for name, value in (("episodes", episodes), ("horizon", horizon), ("num_samples", num_samples),
                            ("iterations", iterations), ("history", history), ("max_steps", max_steps)):
            if value < 1:
                raise ValueError(f"{name}: expected >= 1, got {value}")
        if horizon < 2:
            raise ValueError(f"horizon: expected >= 2, got {horizon}")
        if planner not in ("cem", "mppi"):
            raise ValueError(f"planner: expected cem or mppi, got {planner!r}")
        reward = reward_fn(env_id)
        pc = PlannerConfig(horizon=horizon, num_samples=num_samples, iterations=iterations)
        t0 = time.perf_counter()
        record = [] if save_episodes else None
        returns = run_episodes(env_id, model_policy(self.model, self.normalizer, reward, planner, pc, seed, history),
                               episodes, seed, max_steps, record=record)
        out = {"run_dir": self.run_dir, "env": env_id, "planner": planner, "episodes": episodes,
               "mean_return": float(np.mean(returns)), "returns": returns, "seconds": time.perf_counter() - t0,
               "baselines": {}}
        if save_episodes:
            from dvae.planning import episodes_to_trajectories
            from envs import save_npz

            save_npz(save_episodes, episodes_to_trajectories(record, env_id, seed, f"{planner} on {self.run_dir}"))
            out["saved_episodes"] = save_episodes
        if baselines:
            rnd = run_episodes(env_id, random_policy(seed), episodes, seed, max_steps)
            out["baselines"]["random"] = {"mean_return": float(np.mean(rnd)), "returns": rnd}
            factory = true_returns(env_id)
            if factory is not None:
                tr = run_episodes(env_id, true_policy(factory, planner, pc, seed), episodes, seed, max_steps)
                out["baselines"]["true_model"] = {"mean_return": float(np.mean(tr)), "returns": tr}
                gap = out["baselines"]["true_model"]["mean_return"] - out["baselines"]["random"]["mean_return"]
                if gap != 0:
                    out["normalized_return"] = (out["mean_return"] - out["baselines"]["random"]["mean_return"]) / gap
        return out


# --- forecasts --------------------------------------------------------------------------------------
class Forecast:
    """Sampled futures of :meth:`Run.predict`, in data units.

    ``mean`` (H, x_dim), or (B, H, x_dim) for a batch: the predictive mean; ``samples`` (num_samples,
    H, x_dim) or (num_samples, B, H, x_dim); ``context`` the observations it was conditioned on;
    ``future_actions`` the controls that drove it (None: uncontrolled).
    """

    def __init__(self, mean: np.ndarray, samples: np.ndarray, context: np.ndarray,
                 future_actions: Optional[np.ndarray] = None, names: Optional[Sequence[str]] = None):
        self.mean, self.samples, self.context, self.future_actions = mean, samples, context, future_actions
        self.names = names

    def __repr__(self) -> str:
        return f"Forecast(mean {self.mean.shape}, samples {self.samples.shape})"

    @property
    def horizon(self) -> int:
        return self.mean.shape[-2]

    def quantile(self, q) -> np.ndarray:
        """The ``q`` quantile(s) of the samples at every step: shaped as ``mean`` (a list of q: stacked first)."""
        q_arr = np.asarray(q, np.float64)
        if not np.all((q_arr >= 0) & (q_arr <= 1)):
            raise ValueError(f"q: expected quantiles in [0, 1], got {q}")
        return np.quantile(self.samples, q_arr, axis=0)

    def plot(self, truth=None, index: int = 0, level: float = 0.9, path: Optional[str] = None):
        """The context, the predictive mean with its ``level`` band (and ``truth`` (H, x_dim) when
        given) per dimension, against the step; the controls under it. ``index``: which sequence of a
        batch. Returns the matplotlib Figure (saved to ``path`` when given)."""
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        batched = self.mean.ndim == 3
        mean = self.mean[index] if batched else self.mean  # (H, x_dim)
        samples = self.samples[:, index] if batched else self.samples  # (S, H, x_dim)
        context = self.context[index] if batched else self.context  # (C, x_dim)
        u = None if self.future_actions is None else (self.future_actions[index] if batched else self.future_actions)
        lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=0)
        if truth is not None:
            truth = _numpy(truth, "truth", f"the true future ({self.horizon}, x_dim)")
            truth = truth[index] if truth.ndim == 3 else truth
            if truth.ndim == 1 and mean.shape[1] == 1:
                truth = truth[:, None]
            if truth.shape != mean.shape:
                raise _shape_error("truth", f"({mean.shape[0]}, {mean.shape[1]}) (horizon, x_dim)", truth)
        x_dim, C, H = mean.shape[1], len(context), len(mean)
        rows = x_dim + (u is not None)
        fig, axes = plt.subplots(rows, 1, figsize=(7, 1.8 * rows + 0.6), sharex=True, squeeze=False)
        t_ctx, t_fut = np.arange(C), np.arange(C, C + H)
        for d in range(x_dim):
            ax = axes[d, 0]
            ax.plot(t_ctx, context[:, d], color="black", lw=1.2, label="observed")
            ax.fill_between(t_fut, lo[:, d], hi[:, d], color="C0", alpha=0.25, label=f"{level:.0%} band")
            ax.plot(t_fut, mean[:, d], color="C0", lw=1.5, label="predictive mean")
            if truth is not None:
                ax.plot(t_fut, truth[:, d], color="black", ls="--", lw=1.0, label="truth")
            ax.axvline(C - 0.5, color="grey", lw=0.8, ls=":")
            ax.set_ylabel(self.names[d] if self.names else f"x[{d}]")
        axes[0, 0].legend(loc="best", fontsize=8)
        if u is not None:
            ax = axes[-1, 0]
            ax.step(np.arange(C - 1, C - 1 + H), u, where="post", lw=1.0)
            ax.set_ylabel("controls")
        axes[-1, 0].set_xlabel("step")
        axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.tight_layout()
        if path is not None:
            from dvae.run import atomic_write_bytes

            atomic_write_bytes(path, lambda f: fig.savefig(f, format=os.path.splitext(path)[1][1:] or "png", dpi=110))
        return fig
