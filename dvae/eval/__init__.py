"""Evaluation utilities: forecasting baselines, k-step errors and plots (numpy + matplotlib)."""
from .baselines import LinearARX, kstep_rmse, kstep_windows, persistence_forecast
from .plots import plot_kstep_errors, plot_predictions, plot_reconstructions, plot_training_curves

__all__ = [
    "LinearARX", "kstep_rmse", "kstep_windows", "persistence_forecast",
    "plot_kstep_errors", "plot_predictions", "plot_reconstructions", "plot_training_curves",
]
from .openloop import kstep_report, predict_windows

__all__ += ["kstep_report", "predict_windows"]
