"""`SequenceBatch`: padded, batch-first sequences with a mask, and their collation."""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch


class SequenceBatch(NamedTuple):
    """A batch of variable-length sequences, batch first, padded at the end.

    Fields:
        x: (B, T, x_dim) float observations x_0 .. x_{T-1}.
        u: (B, T, u_dim) float controls or None; ``u[:, t]`` is applied after ``x[:, t]`` is
            observed and drives the transition into ``z[:, t + 1]`` (the last one is unused).
        mask: (B, T) bool, true on real steps.
        lengths: (B,) int64, the number of real steps of each sequence.
        c: (B, c_dim) float per-sequence conditions (a one-hot label or any vector) of a conditional
            model, or None.
        obs_mask: (B, T, x_dim) bool or None: true on the observed entries of x. None: every entry of
            every real step is observed. Missing entries hold 0 in ``x`` and contribute no likelihood
            (a step with no observed entry contributes none at all); :func:`collate` makes it from
            NaN entries.
    """

    x: torch.Tensor
    u: Optional[torch.Tensor]
    mask: torch.Tensor
    lengths: torch.Tensor
    c: Optional[torch.Tensor] = None
    obs_mask: Optional[torch.Tensor] = None

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def num_steps(self) -> int:
        return self.x.shape[1]

    @property
    def x_dim(self) -> int:
        return self.x.shape[2]

    @property
    def u_dim(self) -> int:
        return 0 if self.u is None else self.u.shape[2]

    @property
    def c_dim(self) -> int:
        return 0 if self.c is None else self.c.shape[1]

    def step_u(self, t: int) -> Optional[torch.Tensor]:
        """The control u_t (B, u_dim), or None for an uncontrolled batch."""
        return None if self.u is None else self.u[:, t]

    def step_obs_mask(self, t: int) -> Optional[torch.Tensor]:
        """The observed entries of x_t (B, x_dim) bool, or None when every entry is observed."""
        return None if self.obs_mask is None else self.obs_mask[:, t]

    def to(self, device, non_blocking: bool = False) -> "SequenceBatch":
        """The batch on ``device``; ``non_blocking``: copies from pinned host memory (:meth:`pin_memory`)
        do not wait for the device (the host goes on collating the next batch)."""
        def move(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return SequenceBatch(move(self.x), move(self.u), move(self.mask), move(self.lengths), move(self.c),
                             move(self.obs_mask))

    def pin_memory(self) -> "SequenceBatch":
        """The batch in page-locked host memory (needs CUDA): the source of an asynchronous copy."""
        return SequenceBatch(*(None if t is None else t.pin_memory() for t in self))

    def to_device(self, device) -> "SequenceBatch":
        """The batch moved to ``device`` as training moves it: on CUDA through pinned memory with a
        ``non_blocking`` copy (a host-collated batch, not resident there); elsewhere a plain move."""
        device = torch.device(device)
        if device.type == "cuda" and self.x.device.type == "cpu":
            return self.pin_memory().to(device, non_blocking=True)
        return self.to(device)

    def check(self) -> "SequenceBatch":
        """Assert the shapes of the contract; returns self."""
        B, T, _ = self.x.shape
        assert self.mask.shape == (B, T) and self.mask.dtype == torch.bool, self.mask.shape
        assert self.lengths.shape == (B,), self.lengths.shape
        if self.u is not None:
            assert self.u.shape[:2] == (B, T), (self.u.shape, self.x.shape)
        if self.c is not None:
            assert self.c.dim() == 2 and self.c.shape[0] == B, (self.c.shape, self.x.shape)
        if self.obs_mask is not None:
            assert self.obs_mask.shape == self.x.shape and self.obs_mask.dtype == torch.bool, self.obs_mask.shape
        return self


def collate(xs: Sequence[torch.Tensor], us: Optional[Sequence[torch.Tensor]] = None,
            cs: Optional[Sequence[torch.Tensor]] = None, missing: Optional[bool] = None) -> SequenceBatch:
    """Pad a list of sequences ``x_i`` (L_i, x_dim) (and ``u_i`` (L_i, u_dim)) into a SequenceBatch;
    ``cs``: each sequence's condition ``c_i`` (c_dim,), stacked into ``c`` (B, c_dim).

    NaN entries of an ``x_i`` are missing observations: they become 0 in ``x`` and false in
    ``obs_mask`` (None when no entry is missing). Loaders refuse NaN unless a missing-data mode was
    asked for (``--missing nan``), so a NaN reaching here is meant. ``missing``: whether any entry is
    NaN, where the caller knows it (False: no ``obs_mask``, nothing looked up); None: looked up here."""
    if len(xs) == 0:
        raise ValueError("cannot collate an empty list of sequences")
    lengths = torch.tensor([len(x) for x in xs], dtype=torch.long)  # (B,)
    B, T = len(xs), max(len(x) for x in xs)
    x = xs[0].new_zeros(B, T, xs[0].shape[-1])  # (B, T, x_dim)
    for i, xi in enumerate(xs):
        x[i, : len(xi)] = xi
    u = None
    if us is not None:
        u = us[0].new_zeros(B, T, us[0].shape[-1])  # (B, T, u_dim)
        for i, ui in enumerate(us):
            u[i, : len(ui)] = ui
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
    c = None if cs is None else torch.stack([torch.as_tensor(ci, dtype=x.dtype) for ci in cs])  # (B, c_dim)
    obs_mask = None
    nan = torch.isnan(x) if missing is not False else None  # (B, T, x_dim); padding is 0, never NaN
    if nan is not None and (missing or nan.any()):
        obs_mask = ~nan & mask[..., None]  # (B, T, x_dim)
        x = torch.where(nan, x.new_zeros(()), x)
    return SequenceBatch(x, u, mask, lengths, c, obs_mask)


class ResidentSequences:
    """A set of sequences held once on a device, batches gathered there: no host-to-device copy per
    batch. The steps of every sequence are concatenated, (sum of lengths, dim); :meth:`batch` pads the
    rows asked for exactly as :func:`collate` does (zeros after each sequence's end, the same mask,
    lengths and conditions). For sequences without missing entries only (``collate`` decides per batch
    whether a batch has an ``obs_mask``, which would need a read of the device)."""

    def __init__(self, xs, us=None, cs=None, device="cpu"):
        import numpy as np

        if len(xs) == 0:
            raise ValueError("no sequences to hold")
        lengths = np.asarray([len(x) for x in xs], dtype=np.int64)
        if (lengths < 1).any():
            raise ValueError("every sequence needs at least one step")
        flat = np.concatenate([np.asarray(x) for x in xs])  # (sum L, x_dim)
        if np.isnan(flat).any():
            raise ValueError("sequences with missing (NaN) entries are collated per batch")
        device = torch.device(device)
        self.x = torch.from_numpy(flat).to(device)
        self.u = None if us is None else torch.from_numpy(np.concatenate([np.asarray(u) for u in us])).to(device)
        self.c = None if cs is None else torch.stack([torch.as_tensor(ci, dtype=self.x.dtype) for ci in cs]).to(device)
        self.lengths = torch.from_numpy(lengths).to(device)  # (N,)
        self.offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]])).to(device)  # (N,)
        self.device = device

    @staticmethod
    def holds(xs, us=None, max_bytes: int = 2 ** 30) -> bool:
        """Whether these sequences can be held: arrays in memory (not lazily read), every sequence at
        least one step long, no missing (NaN) entries, at most ``max_bytes`` of observations and controls."""
        import numpy as np

        if not (isinstance(xs, (list, tuple)) and len(xs) and all(isinstance(x, np.ndarray) for x in xs)):
            return False
        size = sum(x.nbytes for x in xs) + (0 if us is None else sum(np.asarray(u).nbytes for u in us))
        return size <= max_bytes and all(len(x) for x in xs) and not any(np.isnan(x).any() for x in xs)

    def batch(self, rows: torch.Tensor, num_steps: int) -> SequenceBatch:
        """The sequences ``rows`` (B,) (indices, on the device) padded to ``num_steps`` (the longest of
        them, known on the host): what ``collate`` gives for them, moved to the device."""
        lengths = self.lengths[rows]  # (B,)
        t = torch.arange(num_steps, device=self.device)
        mask = t[None, :] < lengths[:, None]  # (B, T)
        idx = self.offsets[rows][:, None] + torch.minimum(t[None, :], lengths[:, None] - 1)  # (B, T), within each
        keep = mask[..., None]

        def gather(flat):
            return torch.where(keep, flat[idx], flat.new_zeros(()))  # (B, T, dim), zeros after the end

        return SequenceBatch(gather(self.x), None if self.u is None else gather(self.u), mask, lengths,
                             None if self.c is None else self.c[rows], None)
