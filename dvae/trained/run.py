"""The trained run of the Python API: :class:`Run` (its state, saving, and the input helpers its methods
share); the methods are grouped by job in :mod:`dvae.trained.evaluating` (evaluate, score),
:mod:`dvae.trained.sampling` (predict, generate, impute, filter, smooth) and
:mod:`dvae.trained.acting` (world_model, env, plan)."""

from __future__ import annotations

import copy
import os
from typing import List, Optional

import numpy as np

from dvae.arrays import as_data, check_dims, controls, observations, source_of
from dvae.fitting import ARRAYS_SOURCE, DATA_FILE
from dvae.trained.acting import Acting
from dvae.trained.evaluating import Evaluating
from dvae.trained.sampling import Sampling

def check_new_dir(name: str, path) -> str:
    """``path`` (argument ``name``) as a new run directory's path: it must not exist or be an empty
    directory; else a ValueError naming the argument and the directory, worded for Python (the command
    line's own message names its flags)."""
    from dvae.errors import RunDirError
    from dvae.rundir import CONFIG, check_new_run_dir

    path = os.fspath(path)
    try:
        check_new_run_dir(path)
    except RunDirError:
        if os.path.lexists(os.path.join(path, CONFIG)):
            why = "already holds a run (dvae.load reads it)"
        elif not os.path.isdir(path):
            why = "exists and is not a directory"
        else:
            try:
                entries = sorted(os.listdir(path))
                why = "is not empty and not a run directory (it holds " + ", ".join(entries[:3]) + \
                    (", ...)" if len(entries) > 3 else ")")
            except OSError as e:
                why = f"cannot be read ({e.strerror})"
        raise ValueError(f"{name}: {path!r} {why}; a new run needs a new or empty directory") from None
    return path


class Run(Evaluating, Sampling, Acting):
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
        from dvae.eval.names import obs_names

        meta = {} if self._data is None else self._data.meta  # e.g. a CSV header's obs_names, the env id
        return obs_names(meta, self.config.model.x_dim, self.config.data.source) \
            if self.config.kind == "continuous" else None

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
        from dvae.rundir import RunLock
        from dvae.run import BEST, CHECKPOINT, create_run, load_torch, record_data, save_torch, write_config, write_metrics

        run_dir = check_new_dir("run_dir", run_dir)
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

        if (data is None or source_of(data) is not None) and actions is not None:
            raise ValueError("actions: expected None unless data is given as arrays, got "
                             f"{type(actions).__name__}")
        if data is None:
            out = self.data if missing is None else load_data(self.config, None, missing)
        elif source_of(data) is not None:
            out = load_data(self.config, source_of(data), missing)
        else:
            out = as_data(data, actions, missing=self.config.data.missing == "nan" if missing is None else missing)
        check_dims(out, self.config.model)
        return out

    def _x(self, obs, name: str, allow_nan: bool = False):
        """Observations (C, x_dim) or (B, C, x_dim) -> ((B, C, x_dim) float32 data units, batched?)."""
        return observations(obs, name, self.config.model.x_dim, allow_nan)

    def _u(self, actions, name: str, B: int, steps: int, required: bool = True):
        """Controls (steps, u_dim) / (B, steps, u_dim) float or (steps,) / (B, steps) int (one-hot) ->
        (B, steps, u_dim) float32 data units, or None for an uncontrolled model."""
        return controls(actions, name, self.config.model.u_dim, B, steps, required)

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
