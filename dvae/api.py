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
from typing import Optional, Sequence

from dvae.arrays import as_data, readable_source, source_of
from dvae.fitting import ARRAYS_SOURCE
from dvae.forecast import Forecast
from dvae.trained import Run
from dvae.trained.run import check_new_dir

__all__ = ["fit", "load", "Run", "Forecast"]


def fit(data, actions=None, *, model: str = "dmm", out=None, obs_names: Optional[Sequence[str]] = None,
        **options) -> Run:
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

    source = source_of(data)
    if source is not None and actions is not None:
        raise ValueError(f"actions: expected None with a SOURCE ({source!r} holds its own controls), got "
                         f"{type(actions).__name__}")
    a = train_options(model=model, data=source or ARRAYS_SOURCE, out=None if out is None else os.fspath(out), **options)
    if a.out is not None:
        check_new_dir("out", a.out)  # worded for Python, before any data is read
    loaded = None
    if source is None:
        loaded = as_data(data, actions, missing=a.missing == "nan")
        if not readable_source(loaded.source):
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


def load(run_dir, device: str = "auto") -> Run:
    """The run in ``run_dir`` (written by ``dvae train`` or ``dvae.fit(..., out=...)``), with its best
    parameters (``best.pt``)."""
    from dvae.device import resolve_device
    from dvae.run import load_model, read_metrics

    run_dir = os.fspath(run_dir)
    model, config = load_model(run_dir, resolve_device(device))
    return Run(model, config, read_metrics(run_dir), run_dir=run_dir)
