"""The schedules of training: KL annealing, the plateau learning-rate schedule and early stopping.

Each is a function of the :class:`~dvae.infer.train_config.TrainConfig` and of the trainer's ``state``
(a plain dict, checkpointed with the run), so that a resumed run follows the same schedule:

- KL annealing (:func:`annealing_factor`): the factor on the KL rises linearly from ``kl_start`` to 1
  over ``anneal_epochs`` epochs of updates (the IWAE objective has no KL term: always 1).
- Plateau (:func:`schedule_step`, ``lr_schedule`` plateau): after ``lr_patience`` epochs in a row
  without a better validation bound the rate is multiplied by ``lr_factor``, down to ``min_lr``.
- Early stopping (:func:`converged`): ``patience`` epochs without a better validation bound once the
  schedule has run out (the rate at its floor; with ``lr_schedule`` none, from the start).

The state keys: ``lr_bad_epochs`` (epochs without improvement since the last reduction),
``floor_stale`` (epochs without improvement at the floor) and ``lr_reductions``.
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
        return None
    if at_floor(config, lr):  # the epoch trained at the floor: the schedule has run out
        state["floor_stale"] += 1
        return None
    state["lr_bad_epochs"] += 1
    if state["lr_bad_epochs"] < config.lr_patience:
        return None
    state["lr_bad_epochs"] = 0
    state["lr_reductions"] += 1
    return max(lr * config.lr_factor, config.min_lr)


def converged(state: dict, config) -> bool:
    """Early stopping's test: ``patience`` epochs without a better validation bound once the schedule
    has run out (with ``lr_schedule`` none: since the best epoch); never with ``patience`` 0."""
    return bool(config.patience) and state["floor_stale"] >= config.patience
