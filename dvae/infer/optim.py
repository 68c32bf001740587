"""Adam over all parameters in one torch optimiser (fused on CUDA), with Pyro's per-parameter state.

Pyro's ``pyro.optim.Adam`` keeps one torch optimiser per parameter tensor: an update is one small
Adam per tensor (about 32 for the default DMM), each a few kernel launches on a GPU, and each reads
its step counter on the host. :class:`SharedAdam` keeps every parameter in one ``torch.optim.Adam``
(one parameter group; ``fused=True``: one kernel for the whole update, step counters on the device,
nothing read by the host), behind Pyro's optimiser interface as the trainer uses it:

- ``optim(params)`` updates exactly ``params`` (the parameters of this update's trace: the others'
  gradients are set aside for the step, as Pyro steps only the optimisers of ``params``);
- ``get_state()`` / ``set_state()`` speak Pyro's format, ``{param name: a one-parameter Adam
  state_dict}``: checkpoints written by either optimiser load into the other (counters and moments
  moved to where each keeps them);
- ``optim_objs[p]`` is a per-parameter view whose ``param_groups`` is the one shared group and whose
  ``state_dict``/``load_state_dict`` read and write that parameter's state.

:func:`make_adam` picks it: on CUDA, SharedAdam(fused); elsewhere Pyro's Adam (the CPU path and its
numbers unchanged).
"""

from __future__ import annotations

from typing import Dict

import pyro
import pyro.optim
import torch
from pyro.optim.optim import PyroOptim

_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def make_adam(optim_args: dict, device) -> PyroOptim:
    """Adam for training on ``device``: :class:`SharedAdam` (fused) on CUDA, else ``pyro.optim.Adam``."""
    if torch.device(device).type == "cuda":
        return SharedAdam(optim_args, fused=True)
    return pyro.optim.Adam(optim_args)


class _ParamView:
    """One parameter's face of the shared optimiser, as Pyro's per-parameter optimisers look."""

    def __init__(self, owner: "SharedAdam", param: torch.Tensor):
        self.owner, self.param = owner, param

    @property
    def param_groups(self):
        return self.owner.shared.param_groups  # one group: a change of lr is the whole optimiser's

    def state_dict(self) -> dict:
        group = {k: v for k, v in self.owner.shared.param_groups[0].items() if k != "params"}
        state = self.owner.shared.state.get(self.param)
        out = {}
        if state:  # copied where they are (a fused counter stays on the GPU: no read for a snapshot)
            out = {k: v.detach().clone() for k, v in state.items() if torch.is_tensor(v)}
        return {"state": {0: out} if out else {}, "param_groups": [{**group, "params": [0]}]}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict.get("param_groups") or [{}]
        if "lr" in groups[0]:  # as torch's load_state_dict restores the rate (the group is shared: all equal)
            self.owner.shared.param_groups[0]["lr"] = groups[0]["lr"]
        state = state_dict.get("state", {})
        state = state.get(0, state.get("0")) if isinstance(state, dict) else None
        if not state:
            return
        p, fused = self.param, self.owner.on_device_counters
        new = {}
        for key, value in state.items():
            if key == "step":
                step = torch.as_tensor(value, dtype=torch.float32)
                new[key] = step.to(p.device) if fused else step.to("cpu")
            elif key in _MOMENTS:
                new[key] = value.to(device=p.device, dtype=p.dtype)
        self.owner.shared.state[p] = new


class SharedAdam(PyroOptim):
    """Adam over every parameter in one ``torch.optim.Adam`` (``fused``: one kernel per update, counters
    on the device; else ``foreach``), behind Pyro's optimiser interface (see the module docstring)."""

    def __init__(self, optim_args: dict, fused: bool = False):
        super().__init__(torch.optim.Adam, optim_args)
        self.fused = fused
        self.shared = None

    @property
    def on_device_counters(self) -> bool:
        return self.fused

    def _make(self, p: torch.Tensor) -> torch.optim.Adam:
        kwargs = dict(self.pt_optim_args)
        kwargs.update({"fused": True} if self.fused else {"foreach": True})
        return torch.optim.Adam([p], **kwargs)

    def __call__(self, params, *args, **kwargs) -> None:
        params = list(params)
        for p in params:
            if p not in self.optim_objs:
                if self.shared is None:
                    self.shared = self._make(p)
                else:  # into the one group (one kernel over all), not a group of its own
                    self.shared.param_groups[0]["params"].append(p)
                view = self.optim_objs[p] = _ParamView(self, p)
                self.grad_clip[p] = None
                name = pyro.get_param_store().param_name(p)
                state = self._state_waiting_to_be_consumed.pop(name, None)
                if state is not None:
                    view.load_state_dict(state)
        if self.shared is None:
            return
        wanted = {id(p) for p in params}
        aside: Dict[int, torch.Tensor] = {}
        for p in self.shared.param_groups[0]["params"]:  # parameters outside this update: not stepped
            if id(p) not in wanted and p.grad is not None:
                aside[id(p)], p.grad = p.grad, None
        try:
            self.shared.step(*args, **kwargs)
        finally:
            for p in self.shared.param_groups[0]["params"]:
                if id(p) in aside:
                    p.grad = aside[id(p)]
