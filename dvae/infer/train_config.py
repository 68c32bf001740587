"""Training settings: :class:`TrainConfig` (saved in config.json) and the defaults it falls back on.

The learning rate a run trains at, given none, is its model family's (``default_lr``: each family's
class states it); the epochs of ``dvae train`` given neither ``--epochs`` nor ``--time-limit`` are
``DEFAULT_EPOCHS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from dvae.models import MODELS


DEFAULT_EPOCHS = 60
"""The epochs of ``dvae train`` given neither ``--epochs`` nor ``--time-limit`` (``TrainConfig.epochs``
None, with a time limit, trains until the limit or convergence)."""


DEFAULT_LR = {name: cls.default_lr for name, cls in MODELS.items()}
"""Adam's learning rate per model family when ``TrainConfig.lr`` is None, as each family's class states
it (``default_lr``; chosen for time to quality: docs/performance.md, "Tuning the defaults")."""


OTHER_LR = 1e-2
"""The default learning rate of any other model (a user's own ``DynamicalVAE`` subclass)."""


def default_lr(family: str) -> float:
    """The default learning rate of a model family (``DEFAULT_LR``; ``OTHER_LR`` for other names)."""
    return DEFAULT_LR.get(family, OTHER_LR)


@dataclass
class TrainConfig:
    """Optimisation settings (saved in config.json)."""

    epochs: Optional[int] = None
    """Total number of epochs (a resumed run counts the epochs already done); None: no cap, the time
    limit or convergence (the learning-rate schedule run out, then ``patience``) ends training.
    ``dvae train`` with neither ``--epochs`` nor ``--time-limit`` trains ``DEFAULT_EPOCHS``."""
    time_limit: Optional[float] = None
    """Stop after this many seconds of training (checked between updates); None: no limit."""
    batch_size: int = 16
    """Sequences per update."""
    lr: Optional[float] = None
    """Learning rate; None: the model family's default, ``default_lr(family)`` (``DEFAULT_LR``, chosen
    for time to quality: docs/performance.md, "Tuning the defaults"). ``Trainer`` keeps the number it
    used in its ``config``."""
    optimizer: str = "adam"
    """adam or clipped_adam (Pyro's ClippedAdam, with lr decay ``lr_decay`` per update)."""
    lr_decay: float = 1.0
    """ClippedAdam's per-update learning-rate decay."""
    clip_norm: float = 10.0
    """Global gradient-norm clip (0: none)."""
    kl_start: float = 0.1
    """Annealing factor on the KL at the first update, rising linearly to 1."""
    anneal_epochs: float = 5.0
    """Epochs of linear KL warm-up (0: none)."""
    free_bits: float = 0.0
    """Free bits: nats per latent dimension per step below which the KL is not pushed."""
    beta: float = 1.0
    """Weight on the KL term (beta-VAE); 1 is the ELBO. Multiplies the annealing factor; free bits floor
    the KL before it is weighted. Validation bounds always use beta = 1."""
    collapse_kl: float = 0.01
    """Posterior collapse: validation KL per step (nats) below which an epoch counts as collapsed."""
    collapse_epochs: int = 3
    """Posterior collapse: consecutive collapsed epochs before the trainer warns."""
    patience: int = 10
    """Early stopping (0: never stop early): with a schedule (``lr_schedule`` plateau), epochs without a
    better validation bound once the learning rate has reached its floor ``min_lr`` (the schedule has
    run out); without one (none), epochs without a better validation bound. Either way also at least
    ``plateau_updates`` updates. Training that stops early ends with the best parameters restored into
    the model."""
    lr_schedule: str = "plateau"
    """plateau: multiply the learning rate by ``lr_factor`` after ``lr_patience`` epochs in a row without a
    better validation bound, down to ``min_lr``; none: a constant rate (docs/performance.md, "Learning-
    rate schedule")."""
    lr_factor: float = 0.5
    """plateau: the factor on the learning rate at each reduction, in (0, 1)."""
    lr_patience: int = 3
    """plateau: epochs in a row without a better validation bound before the rate is reduced (and at
    least ``plateau_updates`` updates)."""
    plateau_updates: int = 500
    """The fewest updates a plateau spans: the rate is reduced, and early stopping stops, only after this
    many updates since the last better validation bound (or the last reduction), besides ``lr_patience``
    (``patience``) epochs. On a small data set an epoch is a few updates, and a few epochs without a
    better bound are mostly the noise of the bound (docs/performance.md, "Time to quality"). 0: epochs
    alone."""
    min_lr: float = 1e-4
    """plateau: the floor of the learning rate (a rate set at or below it is never reduced)."""
    objective: str = "elbo"
    """The training objective: elbo (the per-step dynamical ELBO, ``DynamicalELBO``) or iwae (the
    ``train_samples``-sample importance-weighted bound, ``dvae.infer.objectives.IWAEObjective``; no
    annealing, free bits or beta). Either is divided by the batch's number of real steps."""
    train_samples: int = 1
    """iwae: K, the importance samples per sequence of the training bound (K = 1: the one-draw ELBO)."""
    seed: int = 0
    """Seed of parameters, batches and samples."""
    device: str = "auto"
    """auto, cpu or cuda."""
    eval_batch_size: int = 64
    """Sequences per batch when evaluating."""
    vectorized: bool = True
    """Train the time-vectorized form of the program (same ELBO and gradients, fewer Pyro sites);
    False: the classic per-step program."""
    bucket: bool = True
    """Length-bucketed batches: sequences of similar length batched together (less padding), the
    order of the batches shuffled each epoch."""
