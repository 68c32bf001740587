"""Names (with units where known) for the dimensions of observations and controls, for plots.

Where a name comes from, first to last: names the user gave (``dvae.fit(..., obs_names=...)``), the
data's own (a CSV header, an ``.npz``'s ``obs_names``: one comma-separated string), then the
Gymnasium env the data came from (``ENV_OBS_NAMES``, ``ENV_ACTION_NAMES``); otherwise ``x[d]`` and
``u[d]``. No matplotlib here: the API imports it.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

# Gymnasium's documented observation and action spaces, units as documented there
ENV_OBS_NAMES = {
    "Pendulum-v1": ["cos theta", "sin theta", "theta dot (rad/s)"],
    "CartPole-v1": ["cart position (m)", "cart velocity (m/s)", "pole angle (rad)", "pole angular velocity (rad/s)"],
    "MountainCarContinuous-v0": ["position (m)", "velocity (m/s)"],
}
ENV_ACTION_NAMES = {
    "Pendulum-v1": ["torque (N m)"],
    "CartPole-v1": ["push left", "push right"],  # one-hot, as the model sees a Discrete(2) action
    "MountainCarContinuous-v0": ["force"],
}


def _split(names) -> Optional[List[str]]:
    if names is None:
        return None
    if hasattr(names, "tolist"):  # a numpy string scalar or array from an .npz
        names = names.tolist()
    if isinstance(names, str):
        names = names.split(",")
    return [str(n).strip() for n in names]


def obs_names(meta: Optional[dict], x_dim: int, source: Optional[str] = None, given: Optional[Sequence[str]] = None
              ) -> Optional[List[str]]:
    """A name per observation dimension, or None when nothing names them (or the count does not match)."""
    meta = meta or {}
    env_id = _split(meta.get("env_id"))
    env_id = env_id[0] if env_id else ("Pendulum-v1" if source == "pendulum" else None)
    for names in (_split(given), _split(meta.get("obs_names")), ENV_OBS_NAMES.get(env_id)):
        if names is not None and len(names) == x_dim:
            return list(names)
    return None


def action_names(meta: Optional[dict], u_dim: int, source: Optional[str] = None) -> Optional[List[str]]:
    """A name per control dimension, or None."""
    meta = meta or {}
    env_id = _split(meta.get("env_id"))
    env_id = env_id[0] if env_id else ("Pendulum-v1" if source == "pendulum" else None)
    for names in (_split(meta.get("action_names")), ENV_ACTION_NAMES.get(env_id)):
        if names is not None and len(names) == u_dim:
            return list(names)
    return None


NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]


def note_name(midi: int) -> str:
    """The scientific pitch name of a MIDI note number: 60 is C4, 21 (the piano's lowest A) is A0."""
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"
