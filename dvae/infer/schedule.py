"""The schedules of training: KL annealing, the plateau learning-rate schedule and early stopping.

Each is a function of the :class:`~dvae.infer.train_config.TrainConfig` and of the trainer's ``state``
(a plain dict, checkpointed with the run), so that a resumed run follows the same schedule:

- KL annealing (:func:`annealing_factor`): the factor on the KL rises linearly from ``kl_start`` to 1
  over ``anneal_epochs`` epochs of updates (the IWAE objective has no KL term: always 1).
- Plateau (:func:`schedule_step`, ``lr_schedule`` plateau): after ``lr_patience`` epochs in a row
  without a better validation bound, and at least ``plateau_updates`` updates since the last better
  bound or the last reduction, the rate is multiplied by ``lr_factor``, down to ``min_lr``.
- Early stopping (:func:`converged`): ``patience`` epochs without a better validation bound once the
  schedule has run out (the rate at its floor; with ``lr_schedule`` none, from the start), and at
  least ``plateau_updates`` updates since the last better bound or the last reduction.

``plateau_updates`` makes a plateau span enough updates whatever the size of an epoch: on a small data
set an epoch is a few updates, and a few epochs without a better bound are then mostly the noise of
the validation bound, not a plateau (docs/performance.md, "Time to quality").

The state keys: ``lr_bad_epochs`` (epochs without improvement since the last reduction),
``floor_stale`` (epochs without improvement at the floor), ``lr_reductions`` and ``plateau_start``
(the update count, ``step``, at the last better bound or the last reduction; 0 where a state written
before it lacks it).
"""

from __future__ import annotations

from typing import Optional


def annealing_factor(config, step: int, batches_per_epoch: int) -> float:
    """The factor on the KL at update ``step``: ``kl_start`` rising linearly to 1 over ``anneal_epochs``
    epochs; 1 with no warm-up or with an objective other than the ELBO (the IWAE bound has no KL)."""
    warm = config.anneal_epochs * batches_per_epoch
    if warm <= 0 or config.objective != "elbo":
        return 1.0
    return min(1.0, config.kl_start + (1.0 - config.kl_start) * step / warm)


def at_floor(config, lr: float) -> bool:
    """Whether the schedule has nothing left to reduce: the rate ``lr`` at (or below) ``min_lr``, or no
    schedule (``lr_schedule`` none)."""
    return config.lr_schedule != "plateau" or lr <= config.min_lr * (1 + 1e-9)


def schedule_step(state: dict, config, lr: float, improved: bool) -> Optional[float]:
    """After an epoch's validation (``lr``: the rate it trained at): count the epochs without improvement
    in ``state`` and reduce on plateau. Returns the new learning rate where it is reduced, else None."""
    if improved:
        state["lr_bad_epochs"] = state["floor_stale"] = 0
        state["plateau_start"] = state.get("step", 0)
        return None
    if at_floor(config, lr):  # the epoch trained at the floor: the schedule has run out
        state["floor_stale"] += 1
        return None
    state["lr_bad_epochs"] += 1
    if state["lr_bad_epochs"] < config.lr_patience or plateau_length(state) < config.plateau_updates:
        return None
    state["lr_bad_epochs"] = 0
    state["lr_reductions"] += 1
    state["plateau_start"] = state.get("step", 0)
    return max(lr * config.lr_factor, config.min_lr)


def plateau_length(state: dict) -> int:
    """Updates since the last better validation bound or the last reduction of the rate."""
    return state.get("step", 0) - state.get("plateau_start", 0)


def converged(state: dict, config) -> bool:
    """Early stopping's test: ``patience`` epochs without a better validation bound once the schedule
    has run out (with ``lr_schedule`` none: since the best epoch), and at least ``plateau_updates``
    updates since the last better bound or the last reduction; never with ``patience`` 0."""
    return (bool(config.patience) and state["floor_stale"] >= config.patience
            and plateau_length(state) >= config.plateau_updates)
