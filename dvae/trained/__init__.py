"""A trained model with its configuration, normaliser and metrics, as the Python API hands it out:
:class:`Run` (``dvae.fit``, ``dvae.load``)."""

from dvae.trained.run import Run

__all__ = ["Run"]
