"""Trajectory collection from Gymnasium environments (independent of ``dvae``)."""

from envs.collect import OUPolicy, RandomPolicy, collect, save_npz

__all__ = ["collect", "save_npz", "OUPolicy", "RandomPolicy"]
