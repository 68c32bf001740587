"""Reading checkpoints: loaded without running code, then checked field by field before use.

``torch.load(weights_only=True)`` guarantees a checkpoint holds only tensors and plain containers; it
says nothing of their structure. A zero-byte file, ``best.pt`` copied over ``checkpoint.pt``, or a
trainer state with a negative epoch, a string learning-rate scale or a truncated RNG state would fail
later with an IndexError, a KeyError or a ZeroDivisionError, or be silently accepted. Here every
field a resume or a load uses is checked for its type and range, and the first problem is reported
as one line naming the file and the field (:class:`~dvae.errors.RunDirError`).

Two kinds: the parameters alone (``best.pt``: ``{"model", "epoch"}``; what ``dvae eval`` and the other
run-reading verbs load) and a full training checkpoint (``checkpoint.pt``: ``model``, ``best_model``,
``optim``, ``state``, ``rng``, ``rows``, plus optional RNG states of other devices or ranks: any key
with ``rng`` in its name holds a CPU ByteTensor, a list of them (``rng_cuda``) or a list of per-rank
``{rng, rng_cuda}`` dictionaries (``rng_ranks``)).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Optional

import torch

from dvae.errors import RunDirError

# the trainer state's counters (integers >= 0) and the sums of an epoch in progress
_COUNTERS = ("epoch", "step", "best_epoch", "since_best", "skipped_updates", "faults", "batch_in_epoch",
             "collapse_count", "lr_bad_epochs", "floor_stale", "lr_reductions", "plateau_start")
_PARTIAL_FLOATS = ("loss_sum", "seconds", "log_lik_sum", "kl_sum")
_PARTIAL_COUNTERS = ("steps_sum", "skipped")
_PARTIAL_OPTIONAL = ("log_lik_sum", "kl_sum")  # read with a default of 0


class _Bad(Exception):
    """A field that fails its check: ``field`` and what was expected."""

    def __init__(self, field: str, why: str):
        super().__init__(f"{field}: {why}")


class _Mismatch(_Bad):
    """Parameters that do not fit the model built from config.json."""


def _report(path: str, e: _Bad) -> RunDirError:
    if isinstance(e, _Mismatch):
        return RunDirError(f"{path}: does not match the model in config.json ({e})")
    return RunDirError(f"{path}: {e}")


def load(path: str, device="cpu") -> object:
    """``torch.load(path, weights_only=True)``, every failure one :class:`RunDirError` naming ``path``.

    Read only from a regular file (not a FIFO or a device) in torch's zip format (what ``torch.save``
    writes; the legacy format declares its storages' sizes before their bytes, and torch allocates
    them as declared), whose compressed members inflate to at most :func:`dvae.inputs.max_bytes` in
    all: a small file cannot make the load allocate gigabytes. Stored members are bounded by the file."""
    import zipfile

    from dvae.errors import DataError
    from dvae.inputs import check_bytes, open_regular

    try:
        f = open_regular(path, "checkpoint")
    except DataError as e:
        raise RunDirError(str(e).replace("no such file", "no such checkpoint")) from None
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            raise RunDirError(f"{path}: empty file (0 bytes): not a checkpoint (a write was cut short?)")
        try:
            with zipfile.ZipFile(f) as z:
                inflated = sum(i.file_size for i in z.infolist() if i.compress_type != zipfile.ZIP_STORED)
                if any(i.compress_type == zipfile.ZIP_STORED and i.file_size != i.compress_size for i in z.infolist()):
                    raise RunDirError(f"{path}: not a loadable checkpoint (a corrupt zip directory)")
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
            raise RunDirError(f"{path}: not a checkpoint in torch's zip format ({type(e).__name__}: "
                              f"{str(e)[:120]})") from None
        try:
            check_bytes(inflated, "inflating its compressed members", path)
        except DataError as e:
            raise RunDirError(str(e)) from None
        f.seek(0)
        try:
            return torch.load(f, map_location=device, weights_only=True)
        except Exception as e:  # unpickling errors of a corrupt or hostile file
            first = (str(e).splitlines() or [""])[0][:200]
            raise RunDirError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {first})") from None


def load_parameters(path: str, device="cpu", reference: Optional[dict] = None) -> dict:
    """The model parameters of ``best.pt`` or ``checkpoint.pt`` (``ckpt["model"]``), checked (against
    ``reference``, the state dict of the model they are loaded into, where given)."""
    ckpt = load(path, device)
    try:
        if not isinstance(ckpt, dict):
            raise _Bad("(top level)", f"a {type(ckpt).__name__}, not a checkpoint's dictionary")
        if "model" not in ckpt:
            raise _Bad("model", "missing: the file has no model parameters")
        _check_parameters(ckpt["model"], "model", shapes=reference)
        if "epoch" in ckpt:
            _counter(ckpt["epoch"], "epoch")
    except _Bad as e:
        raise _report(path, e) from None
    return ckpt["model"]


def load_training(path: str, device="cpu", batches_per_epoch: Optional[int] = None,
                  optimizer: Optional[str] = None, reference: Optional[dict] = None) -> dict:
    """A full training checkpoint (``checkpoint.pt``) for ``--resume``, every field checked.
    ``batches_per_epoch``: the resumed trainer's, to check the position within the epoch; ``optimizer``:
    the run's (adam, clipped_adam), to check the optimiser state against; ``reference``: the state dict
    of the model it is loaded into (its parameters' names, shapes and dtypes)."""
    ckpt = load(path, device)
    try:
        check_training(ckpt, batches_per_epoch, optimizer, reference)
    except _Bad as e:
        raise _report(path, e) from None
    return ckpt


def check_training(ckpt, batches_per_epoch: Optional[int] = None, optimizer: Optional[str] = None,
                   reference: Optional[dict] = None) -> None:
    """Raise ``_Bad(field, why)`` for the first field of a training checkpoint that cannot be resumed."""
    if not isinstance(ckpt, dict):
        raise _Bad("(top level)", f"a {type(ckpt).__name__}, not a checkpoint's dictionary")
    missing = [k for k in ("model", "optim", "state", "rng", "rows") if k not in ckpt]
    if missing:
        hint = (" (this is a best.pt: parameters only; --resume needs the checkpoint.pt that dvae train writes)"
                if set(ckpt) <= {"model", "epoch"} else "")
        raise _Bad(missing[0], f"missing{hint}")
    model = _check_parameters(ckpt["model"], "model", shapes=reference)
    if ckpt.get("best_model") is not None:
        _check_parameters(ckpt["best_model"], "best_model", shapes=model)
    state = ckpt["state"]
    _check_state(state, batches_per_epoch)
    if state.get("best_epoch", 0) > 0 and ckpt.get("best_model") is None:
        raise _Bad("best_model", f"missing although state.best_epoch = {state['best_epoch']}")
    _check_optim(ckpt["optim"], model, optimizer)
    for key, value in ckpt.items():
        if "rng" in key:
            _check_rng(value, key, required=key == "rng")
    if "world_size" in ckpt:
        _counter(ckpt["world_size"], "world_size", minimum=1)
    rows = ckpt["rows"]
    if not isinstance(rows, list):
        raise _Bad("rows", f"a {type(rows).__name__}, not a list of metrics rows")
    if len(rows) != state["epoch"]:
        raise _Bad("rows", f"{len(rows)} rows for state.epoch = {state['epoch']} completed epochs")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or row.get("epoch") != i + 1:
            raise _Bad(f"rows[{i}]", f"expected a metrics row with epoch {i + 1}")
        for key, value in row.items():
            if not isinstance(key, str) or not _plain(value):
                raise _Bad(f"rows[{i}].{key}", f"{_describe(value)}: expected numbers, text or lists of them")


def _plain(value, depth: int = 0) -> bool:
    """A JSON value of a metrics row: a number, text, true/false, null, or a (shallow) list of them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, list) and depth < 2 and all(_plain(v, depth + 1) for v in value)


def _counter(value, field: str, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Bad(field, f"{value!r} is not an integer")
    if value < minimum:
        raise _Bad(field, f"{value!r} is below {minimum}")
    return value


def _number(value, field: str, finite: bool = True, minimum: Optional[float] = None, positive: bool = False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(field, f"{value!r} is not a number")
    if math.isnan(value) or (finite and math.isinf(value)):
        raise _Bad(field, f"{value!r} is not finite")
    if (minimum is not None and value < minimum) or (positive and not value > 0):
        raise _Bad(field, f"{value!r} is out of range (expected {'> 0' if positive else f'>= {minimum}'})")
    return value


def _check_parameters(params, field: str, shapes: Optional[dict] = None) -> dict:
    """A state dict: names to tensors, floating ones finite (``shapes``: a state dict these must match in
    names, shapes and dtypes)."""
    if not isinstance(params, dict) or not params:
        raise _Bad(field, "expected a non-empty dictionary of parameter tensors")
    for name, t in params.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise _Bad(f"{field}[{name!r}]", f"a {type(t).__name__}, not a tensor")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise _Bad(f"{field}[{name!r}]", "has non-finite values")
        if shapes is not None and name not in shapes:
            raise _Mismatch(f"{field}[{name!r}]", "is not a parameter of the model")
        if shapes is not None and (shapes[name].shape != t.shape or shapes[name].dtype != t.dtype):
            raise _Mismatch(f"{field}[{name!r}]", f"{_describe(t)}, the model's {_describe(shapes[name])}")
    if shapes is not None and set(shapes) != set(params):
        missing = sorted(set(shapes) - set(params))[0]
        raise _Mismatch(f"{field}[{missing!r}]", "missing")
    return params


def _check_state(state, batches_per_epoch: Optional[int]) -> None:
    """The trainer state. A key an older checkpoint lacks keeps the trainer's default (only ``epoch`` is
    required); every key present is checked, and the counters against each other."""
    if not isinstance(state, dict):
        raise _Bad("state", f"a {type(state).__name__}, not the trainer state's dictionary")
    _counter(state.get("epoch"), "state.epoch")
    for key in _COUNTERS:
        if key in state:
            _counter(state[key], f"state.{key}")
    get = state.get
    if get("best_epoch", 0) > state["epoch"]:
        raise _Bad("state.best_epoch", f"{state['best_epoch']} is beyond state.epoch = {state['epoch']}")
    if batches_per_epoch is not None and get("batch_in_epoch", 0) >= batches_per_epoch:
        raise _Bad("state.batch_in_epoch", f"{state['batch_in_epoch']} is not below the {batches_per_epoch} "
                                           "batches of an epoch on this data")
    if "step" in state and state["step"] < get("batch_in_epoch", 0):
        raise _Bad("state.step", f"{state['step']} is below state.batch_in_epoch = {state['batch_in_epoch']}")
    if "best_valid" in state:
        _number(state["best_valid"], "state.best_valid", finite=False)
    if "train_seconds" in state:
        _number(state["train_seconds"], "state.train_seconds", minimum=0)
    if "lr_scale" in state:
        _number(state["lr_scale"], "state.lr_scale", positive=True)
    if get("stop_reason") is not None and not isinstance(state["stop_reason"], str):
        raise _Bad("state.stop_reason", f"{state['stop_reason']!r} is not text or null")
    if not isinstance(get("collapse_warned", False), bool):
        raise _Bad("state.collapse_warned", f"{state['collapse_warned']!r} is not true or false")
    if "partial" not in state:
        return
    partial = state["partial"]
    if not isinstance(partial, dict):
        raise _Bad("state.partial", "expected the sums of the epoch in progress (a dictionary)")
    for key in _PARTIAL_COUNTERS + _PARTIAL_FLOATS:
        if key not in partial and key not in _PARTIAL_OPTIONAL:
            raise _Bad(f"state.partial.{key}", "missing")
    for key in _PARTIAL_COUNTERS:
        _counter(partial[key], f"state.partial.{key}")
    for key in _PARTIAL_FLOATS:
        if key in partial:
            _number(partial[key], f"state.partial.{key}", minimum=0 if key == "seconds" else None)


# Adam's group keys that torch fills in when a state dict lacks them (Adam.__setstate__)
_ADAM_DEFAULTED = ("amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay")


@functools.lru_cache(maxsize=None)
def _template(optimizer: str):
    """(param group, state keys) of the optimiser the trainer builds, after one step on a toy parameter:
    what every entry of a checkpoint's optimiser state must look like."""
    p = torch.nn.Parameter(torch.zeros(1))
    p.grad = torch.ones(1)
    if optimizer == "clipped_adam":
        from pyro.optim.clipped_adam import ClippedAdam

        opt = ClippedAdam([p], lr=1e-3)
    else:
        opt = torch.optim.Adam([p], lr=1e-3)
    opt.step()
    sd = opt.state_dict()
    return sd["param_groups"][0], tuple(sd["state"][0])


def _check_optim(optim, model: dict, optimizer: Optional[str] = None) -> None:
    """Pyro's optimiser state: parameter name (Pyro names a module's parameter ``NAME$$$key``) -> a torch
    optimiser's state dict. With ``optimizer`` (adam, clipped_adam: the run's), each is held to what the
    trainer's optimiser writes: the same group settings (only the learning rate, ClippedAdam's decay and
    clip norm vary, within their ranges) and per-parameter tensors of the parameter's shape."""
    if not isinstance(optim, dict):
        raise _Bad("optim", f"a {type(optim).__name__}, not the optimiser state's dictionary")
    group_template, state_keys = _template(optimizer) if optimizer else ({}, ())
    for name, sd in optim.items():
        field = f"optim[{name!r}]"
        if not isinstance(name, str) or not isinstance(sd, dict) or not isinstance(sd.get("state"), dict) \
                or not isinstance(sd.get("param_groups"), list) or len(sd["param_groups"]) != 1:
            raise _Bad(field, "expected an optimiser state dict (state and one param group)")
        key = name.split("$$$", 1)[-1]
        if model and key not in model:
            raise _Bad(field, f"names no parameter of the model ({key!r})")
        param = model.get(key)
        _check_group(sd["param_groups"][0], f"{field}.param_groups[0]", group_template, optimizer)
        for pid, entry in sd["state"].items():
            where = f"{field}.state[{pid!r}]"
            if pid not in sd["param_groups"][0]["params"] or not isinstance(entry, dict):
                raise _Bad(where, "expected the state of the group's parameter (a dictionary)")
            missing = [k for k in state_keys if k not in entry]
            if missing:
                raise _Bad(f"{where}.{missing[0]}", "missing")
            for k, value in entry.items():
                _check_optim_value(value, f"{where}.{k}", k, param)


def _check_group(group, where: str, template: dict, optimizer: Optional[str]) -> None:
    if not isinstance(group, dict) or not isinstance(group.get("params"), list):
        raise _Bad(where, "expected a dictionary with params")
    _number(group.get("lr"), f"{where}.lr", minimum=0)
    for key, want in template.items():
        if key in ("params", "lr"):
            continue
        if key not in group:
            if optimizer == "adam" and key in _ADAM_DEFAULTED:
                continue
            raise _Bad(f"{where}.{key}", "missing")
        value = group[key]
        if key == "lrd":  # ClippedAdam's decay and clip norm: the run's settings
            _number(value, f"{where}.{key}", positive=True)
            if value > 1:
                raise _Bad(f"{where}.{key}", f"{value!r} is above 1")
        elif key == "clip_norm":
            _number(value, f"{where}.{key}", positive=True)
        elif isinstance(value, torch.Tensor) or not _same(value, want):
            raise _Bad(f"{where}.{key}", f"{value!r}: the trainer's optimiser uses {want!r}")


def _same(value, want) -> bool:
    if isinstance(want, tuple):
        return isinstance(value, (tuple, list)) and len(value) == len(want) and all(_same(v, w) for v, w in zip(value, want))
    if want is None or isinstance(want, bool):
        return value is want or (isinstance(value, bool) and value == want)
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value == want


def _check_optim_value(value, where: str, key: str, param) -> None:
    """One per-parameter optimiser value: ``step`` a count >= 0 (a number or a scalar tensor), the
    moments finite tensors of the parameter's shape (second moments >= 0)."""
    if key == "step":
        if isinstance(value, torch.Tensor):
            if value.numel() != 1 or value.is_complex():
                raise _Bad(where, f"expected a step count, not {_describe(value)}")
            value = float(value)
        _number(value, where, minimum=0)
        return
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise _Bad(where, f"expected a floating-point tensor, not {_describe(value)}")
    if param is not None and value.shape != param.shape:
        raise _Bad(where, f"has shape {tuple(value.shape)}, the parameter {tuple(param.shape)}")
    if not bool(torch.isfinite(value).all()):
        raise _Bad(where, "has non-finite values")
    if key.endswith("_sq") and bool((value < 0).any()):
        raise _Bad(where, "has negative values (a second moment)")


def _check_rng(value, field: str, required: bool) -> None:
    """A generator state: a 1-D uint8 tensor (the CPU one of torch's size), or a list of them (one per
    CUDA device, ``rng_cuda``), or a list of per-rank states (``rng_ranks``: each a dictionary of ``rng``
    and ``rng_cuda``, as :func:`dvae.infer.rng.capture` returns, or an older bare tensor); None where
    optional."""
    if value is None and not required:
        return
    if isinstance(value, dict) and not required:  # one rank's entry of rng_ranks
        if "rng" not in value:
            raise _Bad(field, "expected a rank's random state (rng and rng_cuda), 'rng' is missing")
        for key, v in value.items():
            if key not in ("rng", "rng_cuda"):
                raise _Bad(f"{field}.{key}", "not a key of a rank's random state (rng, rng_cuda)")
            _check_rng(v, f"{field}.{key}", required=False)
        return
    if isinstance(value, (list, tuple)):
        if required:
            raise _Bad(field, "expected the CPU generator's state (a ByteTensor), not a list")
        for i, v in enumerate(value):
            _check_rng(v, f"{field}[{i}]", required=False)
        return
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.dim() != 1 or value.numel() == 0:
        raise _Bad(field, f"expected a generator state (a 1-D uint8 tensor), not {_describe(value)}")
    if (field == "rng" or field.endswith(".rng")) and value.numel() != torch.get_rng_state().numel():
        raise _Bad(field, f"{value.numel()} bytes, the CPU generator's state has {torch.get_rng_state().numel()}")


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"
