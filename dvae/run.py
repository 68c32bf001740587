"""Run directories: config.json, checkpoints (atomic), metrics.jsonl, and rebuilding a trained model.

A run directory holds ``config.json`` (model, training and data settings and the normalisation
statistics: everything to rebuild the model), ``metrics.jsonl`` (one row per epoch, strict JSON: a
value that is not a finite number is null),
``checkpoint.pt`` (the latest state, to resume), ``best.pt`` (the parameters with the best validation
bound) and plots. Every file is written by :func:`dvae.files.atomic_write` (a temporary name, fsync,
rename), so a run killed at any moment keeps its last complete version of each.
"""

from __future__ import annotations

import json
import math
import os
import typing
from dataclasses import asdict, dataclass, field, replace
from typing import List, Optional

import torch

from dvae import checkpoint
from dvae.data import Normalizer, SequenceData, load_source
from dvae.data.sources import builtin_loaders
from dvae.data.fingerprint import absolute_source, check_unchanged, fingerprint
from dvae.errors import RunDirError
from dvae.files import atomic_write, write_text
from dvae.infer.objectives import OBJECTIVES
from dvae.infer.train_config import TrainConfig
from dvae.models import MODELS, ModelConfig, all_guides, build_model, capability_problems
from dvae.rundir import RunLock, start_run

CONFIG, METRICS, CHECKPOINT, BEST = "config.json", "metrics.jsonl", "checkpoint.pt", "best.pt"


@dataclass
class DataConfig:
    """Where the data comes from (saved in config.json so eval can reload it)."""

    source: str = "pendulum"
    """A built-in name (pendulum), a trajectory .npz, a polyphonic pickle, or a text file (*.txt or text:PATH);
    recorded as an absolute path."""
    episodes: int = 128
    """Built-in pendulum: number of episodes collected."""
    steps: int = 64
    """Built-in pendulum: actions per episode (observations: steps + 1)."""
    data_seed: int = 0
    """Built-in pendulum: collection seed."""
    missing: str = "none"
    """none: NaN in the data is bad input; nan: NaN entries of x are missing observations."""
    tokens: str = "words"
    """Text: a line's tokens are its whitespace-separated words, or its characters (chars)."""
    min_count: int = 1
    """Text: training tokens seen fewer times than this map to <unk>."""
    source_size: Optional[int] = None
    """The source's size in bytes when the run was trained (None: a built-in source, or an older run)."""
    source_sha256: Optional[str] = None
    """The SHA-256 of the source's content when the run was trained (:mod:`dvae.data.fingerprint`);
    the run-reading verbs refuse a source that has changed since."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    normalizer: Optional[Normalizer] = None
    kind: str = "continuous"
    vocab: Optional[List[str]] = None
    """Categorical (text) data: the token of each id, built from the training split."""

    def to_dict(self) -> dict:
        d = {"model": asdict(self.model), "train": asdict(self.train), "data": asdict(self.data),
             "normalizer": None if self.normalizer is None else asdict(self.normalizer), "kind": self.kind}
        if self.vocab is not None:
            d["vocab"] = list(self.vocab)
        return d

    @classmethod
    def from_dict(cls, d: dict, path: str = CONFIG) -> "RunConfig":
        """Build and validate a RunConfig from parsed JSON; anything else raises RunDirError naming the
        file, the section and the key."""
        if not isinstance(d, dict) or not {"model", "train", "data"} <= set(d):
            raise RunDirError(f"{path}: expected an object with model, train and data sections")
        train = d["train"]
        if isinstance(train, dict) and "lr_schedule" not in train:  # written before the schedule: a constant rate
            train = {**train, "lr_schedule": "none"}
        if isinstance(train, dict) and "plateau_updates" not in train:  # written before it: plateaus in epochs alone
            train = {**train, "plateau_updates": 0}
        config = cls(_build(ModelConfig, d["model"], path, "model"), _build(TrainConfig, train, path, "train"),
                     _build(DataConfig, d["data"], path, "data"),
                     None if d.get("normalizer") is None else _build(Normalizer, d["normalizer"], path, "normalizer"),
                     d.get("kind", "continuous"), d.get("vocab"))
        problem = config.problem()
        if problem:
            raise RunDirError(f"{path}: {problem}")
        return config

    def problem(self) -> Optional[str]:
        """The first value that makes no sense, as 'section.key = value: why', or None."""
        m, t, n = self.model, self.train, self.normalizer
        checks = [
            ("model.model", m.model, m.model in MODELS, f"one of {', '.join(MODELS)}"),
            ("model.rnn_type", m.rnn_type, m.rnn_type in ("gru", "lstm", "rnn"), "gru, lstm or rnn"),
            ("model.likelihood", m.likelihood, m.likelihood in ("gaussian", "bernoulli", "categorical"),
             "gaussian, bernoulli or categorical"),
            ("model.guide", m.guide, m.guide in all_guides(), ", ".join(all_guides())),
            ("model.num_iafs", m.num_iafs, m.num_iafs >= 0 and (m.num_iafs == 0 or m.guide == "iaf"),
             ">= 0, and 0 unless guide is iaf"),
            ("model.iaf_dim", m.iaf_dim, m.iaf_dim >= 1, ">= 1"),
            ("model.u_dim", m.u_dim, m.u_dim >= 0, ">= 0"),
            ("model.c_dim", m.c_dim, m.c_dim >= 0, ">= 0"),
            ("model.kl_balance", m.kl_balance, math.isfinite(m.kl_balance) and 0 <= m.kl_balance < 1,
             "in [0, 1) (0: off)"),
            ("model.kvae_components", m.kvae_components, m.kvae_components >= 1, ">= 1"),
            ("model.v_dim", m.v_dim, m.v_dim >= 0, ">= 0 (0: z_dim)"),
            ("model.actions", m.actions, m.actions in (None, "discrete", "continuous"),
             "discrete, continuous or null"),
            ("model.kvae_state_dim", m.kvae_state_dim, m.kvae_state_dim >= 0, ">= 0 (0: 2 z_dim)"),
        ] + [(f"model.{field}", value, False, want) for field, value, want in capability_problems(m)
             if field in ("c_dim", "bidirectional", "kl_balance", "emission_scale", "vrae_decoder")] + [
            ("train.epochs", t.epochs, t.epochs is None or t.epochs >= 1, ">= 1 (or null: no cap)"),
            ("train.epochs", t.epochs, t.epochs is not None or t.time_limit is not None or t.patience > 0,
             "a number when neither a time limit nor early stopping (patience > 0) ends training"),
            ("train.time_limit", t.time_limit, t.time_limit is None or (math.isfinite(t.time_limit) and t.time_limit > 0),
             "a positive number of seconds (or null: no limit)"),
            ("train.patience", t.patience, t.patience >= 0, ">= 0 (0: never stop early)"),
            ("train.lr_schedule", t.lr_schedule, t.lr_schedule in ("plateau", "none"), "plateau or none"),
            ("train.lr_factor", t.lr_factor, math.isfinite(t.lr_factor) and 0 < t.lr_factor < 1, "in (0, 1)"),
            ("train.lr_patience", t.lr_patience, t.lr_patience >= 1, ">= 1"),
            ("train.plateau_updates", t.plateau_updates, t.plateau_updates >= 0, ">= 0 (0: epochs alone)"),
            ("train.min_lr", t.min_lr, math.isfinite(t.min_lr) and t.min_lr > 0, "a positive number"),
            ("train.objective", t.objective, t.objective in OBJECTIVES, " or ".join(OBJECTIVES)),
            ("train.train_samples", t.train_samples, t.train_samples >= 1, ">= 1"),
            ("train.free_bits", t.free_bits, t.objective == "elbo" or t.free_bits == 0,
             "0 with the iwae objective (free bits act on the ELBO's KL)"),
            ("train.beta", t.beta, t.objective == "elbo" or t.beta == 1,
             "1 with the iwae objective (beta weights the ELBO's KL)"),
            ("train.batch_size", t.batch_size, t.batch_size >= 1, ">= 1"),
            ("train.lr", t.lr, t.lr is None or (math.isfinite(t.lr) and t.lr > 0),
             "a positive number (or null: the model's default)"),
            ("train.optimizer", t.optimizer, t.optimizer in ("adam", "clipped_adam"), "adam or clipped_adam"),
            ("train.lr_decay", t.lr_decay, math.isfinite(t.lr_decay) and 0 < t.lr_decay <= 1, "in (0, 1]"),
            ("train.lr_decay", t.lr_decay, t.lr_decay == 1 or t.optimizer == "clipped_adam",
             "1 unless the optimizer is clipped_adam (adam has no decay)"),
            ("train.device", t.device, t.device in ("auto", "cpu", "cuda"), "auto, cpu or cuda"),
            ("train.seed", t.seed, 0 <= t.seed < 2 ** 32, "in 0..4294967295 (2**32 - 1)"),
            ("data.data_seed", self.data.data_seed, 0 <= self.data.data_seed < 2 ** 32, "in 0..4294967295 (2**32 - 1)"),
            ("train.beta", t.beta, math.isfinite(t.beta) and t.beta >= 0, "a number >= 0"),
            ("train.collapse_kl", t.collapse_kl, math.isfinite(t.collapse_kl) and t.collapse_kl >= 0, "a number >= 0"),
            ("train.collapse_epochs", t.collapse_epochs, t.collapse_epochs >= 1, ">= 1"),
            ("train.time_limit", t.time_limit, t.time_limit is None or (math.isfinite(t.time_limit) and t.time_limit > 0),
             "a positive number of seconds (or null: no limit)"),
            ("train.eval_batch_size", t.eval_batch_size, t.eval_batch_size >= 1, ">= 1"),
            ("train.clip_norm", t.clip_norm, math.isfinite(t.clip_norm) and t.clip_norm >= 0, "a number >= 0 (0: no clip)"),
            ("train.kl_start", t.kl_start, math.isfinite(t.kl_start) and 0 <= t.kl_start <= 1, "in [0, 1]"),
            ("train.anneal_epochs", t.anneal_epochs, math.isfinite(t.anneal_epochs) and t.anneal_epochs >= 0, "a number >= 0"),
            ("train.free_bits", t.free_bits, math.isfinite(t.free_bits) and t.free_bits >= 0, "a number >= 0"),
            ("train.patience", t.patience, t.patience >= 0, ">= 0 (0: no early stopping)"),
            ("train.seed", t.seed, 0 <= t.seed < 2 ** 32, "in 0 .. 2**32 - 1"),
            ("model.num_iafs", m.num_iafs, m.num_iafs <= MAX_IAFS, f"<= {MAX_IAFS}"),
            ("data.episodes", self.data.episodes, self.data.episodes >= 1, ">= 1"),
            ("data.steps", self.data.steps, self.data.steps >= 1, ">= 1"),
            ("data.data_seed", self.data.data_seed, 0 <= self.data.data_seed < 2 ** 32, "in 0 .. 2**32 - 1"),
            ("kind", self.kind, self.kind in ("continuous", "binary", "categorical"), "continuous, binary or categorical"),
            ("data.missing", self.data.missing, self.data.missing in ("none", "nan"), "none or nan"),
            ("data.tokens", self.data.tokens, self.data.tokens in ("words", "chars"), "words or chars"),
            ("data.min_count", self.data.min_count, self.data.min_count >= 1, ">= 1"),
            ("data.source_size", self.data.source_size, self.data.source_size is None or self.data.source_size >= 0,
             "null or >= 0"),
            ("data.source_sha256", self.data.source_sha256, self.data.source_sha256 is None or (
                len(self.data.source_sha256) == 64 and all(c in "0123456789abcdef" for c in self.data.source_sha256)),
             "null or 64 lowercase hex digits"),
        ]
        checks += [(f"model.{k}", getattr(m, k), getattr(m, k) >= 1, ">= 1")
                   for k in ("x_dim", "z_dim", "rnn_dim", "transition_dim", "emission_dim")]
        checks += [(f"model.{k}", getattr(m, k), getattr(m, k) <= MAX_DIM, f"<= {MAX_DIM}")
                   for k in ("x_dim", "u_dim", "c_dim", "z_dim", "rnn_dim", "transition_dim", "emission_dim", "iaf_dim")]
        fs = m.frame_shape
        checks.append(("model.frame_shape", fs, fs is None or (len(fs) == 2 and all(8 <= v <= MAX_DIM and v % 4 == 0 for v in fs)
                                                             and fs[0] * fs[1] == m.x_dim),
                       "null or [H, W]: multiples of 4, at least 8, H * W = x_dim"))
        from dvae.inputs import max_bytes  # sizes a flag declares, against the limit (DVAE_MAX_BYTES)

        limit, width = max_bytes(), m.x_dim + m.u_dim + 2 * m.z_dim + m.rnn_dim + m.transition_dim + m.emission_dim
        checks += [  # lower bounds of what they allocate: one step of K samples of a batch; the pendulum's arrays
            ("train.train_samples", t.train_samples, 4 * t.train_samples * t.batch_size * width <= limit,
             f"K x batch_size x {width} floats (one step's samples) within the limit of {limit} bytes "
             "(DVAE_MAX_BYTES)"),
            ("data.episodes", self.data.episodes, self.data.source != "pendulum"
             or 4 * self.data.episodes * (self.data.steps + 1) * 4 <= limit,
             f"episodes x (steps + 1) x 4 floats within the limit of {limit} bytes (DVAE_MAX_BYTES)")]
        for name, value, ok, want in checks:
            if not ok:
                return f"{name} = {value!r}: expected {want}"
        from dvae.inputs import max_bytes

        n_params = parameter_count(m)
        if n_params is not None and 4 * n_params > max_bytes():
            return (f"model sizes (z_dim {m.z_dim}, rnn_dim {m.rnn_dim}, transition_dim {m.transition_dim}, "
                    f"emission_dim {m.emission_dim}, x_dim {m.x_dim}) make {n_params} parameters, "
                    f"{4 * n_params / 2 ** 30:.1f} GiB: over the size limit (raise DVAE_MAX_BYTES if meant)")
        if self.kind == "categorical" and not (isinstance(self.vocab, list) and len(self.vocab) == m.x_dim
                                               and all(isinstance(t, str) for t in self.vocab)):
            return f"vocab must be a list of x_dim = {m.x_dim} tokens for categorical data"
        if n is None:
            return "normalizer section missing"
        if len(n.x_mean) != m.x_dim or len(n.x_std) != m.x_dim:
            return f"normalizer.x_mean/x_std must have x_dim = {m.x_dim} entries"
        if not all(math.isfinite(v) for v in n.x_mean) or not all(math.isfinite(v) and v > 0 for v in n.x_std):
            return "normalizer.x_std must be positive and x_mean finite"
        if (n.u_mean is None) != (m.u_dim == 0) or (n.u_mean is not None and
                                                    (len(n.u_mean) != m.u_dim or len(n.u_std or []) != m.u_dim)):
            return f"normalizer.u_mean/u_std must have u_dim = {m.u_dim} entries"
        return None


MAX_DIM = 2 ** 24
"""Largest size of any one dimension of a model (x_dim, z_dim, ...): a sanity bound, far above use."""
MAX_IAFS = 64
"""Most affine autoregressive flows per step (guide iaf)."""


def parameter_count(m: ModelConfig) -> Optional[int]:
    """The number of parameters ``build_model(m)`` would allocate, counted on the meta device (nothing
    allocated); the IAF flows (whose construction reads values) are added by formula. None where the
    configuration does not build (:func:`load_model` reports why)."""
    import dataclasses

    base = dataclasses.replace(m, guide="dks", num_iafs=0) if m.guide == "iaf" else m
    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in build_model(base).parameters())
    except Exception:  # an invalid configuration: the real build gives the message
        return None
    if m.guide == "iaf":  # each flow: AutoRegressiveNN(z_dim, [iaf_dim]) -> (mean, scale)
        n += max(1, m.num_iafs) * (m.z_dim * m.iaf_dim + m.iaf_dim + 2 * m.iaf_dim * m.z_dim + 2 * m.z_dim)
    return int(n)


def _build(kind, value, path, section):
    """Instantiate a config dataclass from a JSON object, checking keys and value types."""
    if not isinstance(value, dict):
        raise RunDirError(f"{path}: the {section} section must be an object")
    hints = typing.get_type_hints(kind)
    unknown = sorted(set(value) - set(hints))
    if unknown:
        raise RunDirError(f"{path}: unknown keys {unknown} in the {section} section")
    for key, v in value.items():
        if not _is_instance(v, hints[key]):
            raise RunDirError(f"{path}: {section}.{key} = {v!r} is not of type {_type_name(hints[key])}")
    try:
        return kind(**value)
    except TypeError as e:
        raise RunDirError(f"{path}: {section}: {e}") from None


def _is_instance(v, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return any(_is_instance(v, a) for a in args)
    if hint is type(None):
        return v is None
    if origin in (list, List):
        return isinstance(v, list) and all(_is_instance(x, args[0]) for x in v)
    if hint is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, hint)


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


atomic_write_bytes, atomic_write_text = atomic_write, write_text  # the old names of dvae.files' writers


def save_torch(path: str, obj) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def load_torch(path: str, device="cpu"):
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only); its fields are
    checked by :mod:`dvae.checkpoint` (``load_parameters``, ``load_training``)."""
    return checkpoint.load(path, device)


def read_config(run_dir: str) -> RunConfig:
    if not os.path.isdir(run_dir):
        raise RunDirError(f"{run_dir}: no such run directory")
    from dvae.errors import DataError
    from dvae.inputs import max_bytes, read_bytes

    path = os.path.join(run_dir, CONFIG)
    if not os.path.lexists(path):
        raise RunDirError(f"{path}: missing (is {run_dir} a run directory written by `dvae train`?)")
    try:  # a regular file (not a FIFO or /dev/zero), at most a 16th of the size limit
        raw = read_bytes(path, "config.json", max_bytes() // 16)
    except DataError as e:
        raise RunDirError(str(e)) from None
    try:
        parsed = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as e:
        raise RunDirError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except RecursionError:
        raise RunDirError(f"{path}: not valid JSON (nested too deeply)") from None
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: not valid JSON ({e})") from None
    except ValueError as e:  # NaN, Infinity
        raise RunDirError(f"{path}: not valid JSON ({e})") from None
    return RunConfig.from_dict(parsed, path)


def _refuse_constant(name: str):
    """json's hook for NaN, Infinity and -Infinity: not JSON, and no config value may be one."""
    raise ValueError(f"{name} is not a JSON number")


def _config_text(config: RunConfig) -> str:
    return json.dumps(config.to_dict(), indent=2) + "\n"


def write_config(run_dir: str, config: RunConfig) -> None:
    write_text(os.path.join(run_dir, CONFIG), _config_text(config))


def create_run(run_dir: str, config: RunConfig, first_checkpoint: dict, lock: RunLock,
               files: Optional[dict] = None) -> None:
    """Create ``run_dir`` with its config.json and first checkpoint.pt (and ``files``: name -> bytes or a
    function writing the open file) at once, and leave ``lock`` holding it (:func:`dvae.rundir.start_run`):
    a start killed at any moment leaves no run or a resumable one. Refuses an existing run or any other
    non-empty directory."""
    start_run(run_dir, {**(files or {}), CONFIG: _config_text(config).encode(),
                        CHECKPOINT: lambda f: torch.save(first_checkpoint, f)}, lock)


def read_metrics(run_dir: str) -> list:
    path = os.path.join(run_dir, METRICS)
    if not os.path.exists(path):
        return []
    from dvae.errors import DataError
    from dvae.inputs import read_bytes

    try:  # a regular file within the size limit (not a FIFO or /dev/zero)
        text = read_bytes(path, "metrics.jsonl").decode("utf-8")
    except (DataError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path}: {e}" if isinstance(e, UnicodeDecodeError) else str(e)) from None
    try:
        return [_nan_for_null(json.loads(line)) for line in text.splitlines() if line.strip()]
    except (json.JSONDecodeError, RecursionError) as e:
        raise RunDirError(f"{path}: not valid JSON lines ({str(e)[:200]})") from None


def write_metrics(run_dir: str, rows: list) -> None:
    """metrics.jsonl: one row per epoch, strict JSON (a value that is not a finite number, NaN or
    infinite, is written as null; :func:`read_metrics` gives it back as NaN)."""
    write_text(os.path.join(run_dir, METRICS), "".join(json.dumps(_null_for_nan(r), allow_nan=False) + "\n"
                                                       for r in rows))


def _null_for_nan(value):
    """``value`` with every float that is not finite (in dicts and lists too) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _null_for_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_null_for_nan(v) for v in value]
    return value


def _nan_for_null(value):
    """A metrics row read back: null (a value that was not a finite number) as NaN, in lists too."""
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: _nan_for_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_for_null(v) for v in value]
    return value


def record_data(d: DataConfig) -> DataConfig:
    """``d`` with its source made absolute and its content fingerprinted (call after the data loaded:
    a missing or bad file is reported by the loader)."""
    source = absolute_source(d.source)
    fp = fingerprint(source)
    return replace(d, source=source, source_size=None if fp is None else fp.size,
                   source_sha256=None if fp is None else fp.sha256)


def load_data(config: RunConfig, source: Optional[str] = None, missing: Optional[bool] = None) -> SequenceData:
    """The run's data (or ``source`` read as the run reads its data: its text vocabulary and token
    mode). ``missing``: NaN entries are missing observations (default: as the run was trained). The
    run's own data is refused (DataError) where it is missing or changed since training (a recorded
    fingerprint differs); ``source`` is read as it is. Built-in names (``pendulum``) are loaded by the
    loaders :mod:`dvae.data.sources` registers."""
    d = config.data
    if source is None:
        check_unchanged(d.source, d.source_size, d.source_sha256)
    missing = d.missing == "nan" if missing is None else missing
    return load_source(source or d.source, seed=d.data_seed, episodes=d.episodes, steps=d.steps, missing=missing,
                       tokens=d.tokens, min_count=d.min_count, vocab=config.vocab, builtins=builtin_loaders())


def load_model(run_dir: str, device="cpu", which: str = "best"):
    """Rebuild a trained model from its run directory: returns (model, RunConfig)."""
    config = read_config(run_dir)
    try:
        model = build_model(config.model)
    except (ValueError, TypeError) as e:
        raise RunDirError(f"{os.path.join(run_dir, CONFIG)}: {e}") from None
    path = os.path.join(run_dir, BEST if which == "best" else CHECKPOINT)
    if which == "best" and not os.path.exists(path):
        path = os.path.join(run_dir, CHECKPOINT)
    state = checkpoint.load_parameters(path, device, reference=model.state_dict())
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise RunDirError(f"{path}: does not match the model in config.json ({str(e).splitlines()[0]})") from None
    return model.to(device), config
