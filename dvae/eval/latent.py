"""Latent-space tools: codes of a set of sequences in 2-D, interpolation and traversal, decoded.

Works on the common model interface (``encode``, and the per-step Pyro program ``model``), so it
imports no model family:

- :func:`sequence_codes`: one code per sequence, (N, z_dim). For a model with one code per sequence
  (the VRAE) it is the posterior mean of z; for a model with a latent per step (DMM, VRNN, the static
  VAE, the LGSSM) it is the mean over the sequence's real steps of the posterior mean of z_t.
  The posterior mean is exact where the model exposes it (``posterior_params``, or ``encode``'s
  ``loc``), otherwise the mean of ``num_samples`` posterior draws.
- :func:`pca` (numpy: the eigenvectors of the covariance) and :func:`tsne` (scikit-learn, an
  optional extra: ``pip install dvae[latent]``; None when it is not installed): 2-D maps of codes.
- :func:`lerp`, :func:`slerp` and :func:`traverse`: paths between or around codes;
  :func:`decode_codes`: the emitter means of the sequences a model generates from given codes (a
  model with one code per sequence: its site ``"z"`` is conditioned on each code).
- :func:`latent_report`: all of it on a data set, plots as PNG (matplotlib, Agg); ``dvae latent``.
"""

from __future__ import annotations

import os
from typing import Dict, List, NamedTuple, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pyro import poutine  # noqa: E402

from dvae.data.batch import SequenceBatch, collate  # noqa: E402
from dvae.errors import DataError  # noqa: E402
from dvae.files import save_figure  # noqa: E402

PENDULUM = "Pendulum-v1"


# --- codes ---------------------------------------------------------------------------------------
@torch.no_grad()
def sequence_codes(model, xs: Sequence[np.ndarray], us: Optional[Sequence[np.ndarray]] = None,
                   batch_size: int = 64, num_samples: int = 64) -> np.ndarray:
    """One code per sequence, (N, z_dim), for sequences ``xs`` (L_i, x_dim) in the model's units
    (standardised as in training) and controls ``us`` (L_i, u_dim) or None; see the module docstring."""
    assert len(xs) > 0, "no sequences to encode"
    was_training = model.training
    model.eval()
    codes = []
    for start in range(0, len(xs), batch_size):
        sl = slice(start, start + batch_size)
        batch = collate([torch.from_numpy(np.asarray(x)) for x in xs[sl]],
                        None if us is None else [torch.from_numpy(np.asarray(u)) for u in us[sl]]).to(model.device)
        codes.append(_posterior_mean(model, batch, num_samples).cpu().numpy())
    model.train(was_training)
    return np.concatenate(codes, 0)  # (N, z_dim)


def _posterior_mean(model, batch: SequenceBatch, num_samples: int) -> torch.Tensor:
    """(B, z_dim): the posterior mean of the sequence's code, or of z_t averaged over real steps."""
    if hasattr(model, "posterior_params"):  # q(z | x, u) in closed form (VRAE)
        loc = model.posterior_params(batch)[0]
    else:
        out = model.encode(batch, num_samples=num_samples)
        loc = out["loc"] if "loc" in out else out["z"].mean(0)  # (B, [T,] z_dim)
    if loc.dim() == 3:  # a latent per step: average the real steps
        m = batch.mask[..., None].to(loc.dtype)  # (B, T, 1)
        loc = (loc * m).sum(1) / m.sum(1).clamp(min=1)  # (B, z_dim)
    return loc


# --- 2-D maps ------------------------------------------------------------------------------------
class PCA(NamedTuple):
    """``scores`` (N, k) the centred points projected on ``components`` (k, D) (unit rows, by
    decreasing variance, each signed so that its largest-magnitude entry is positive), ``mean`` (D,),
    ``explained_variance`` (k,) (the covariance's eigenvalues, divisor N - 1) and its ``ratio`` (k,)."""

    scores: np.ndarray
    components: np.ndarray
    mean: np.ndarray
    explained_variance: np.ndarray
    ratio: np.ndarray


def pca(points: np.ndarray, num_components: int = 2) -> PCA:
    """Principal components of ``points`` (N, D) from the eigendecomposition of their covariance."""
    x = np.asarray(points, dtype=np.float64)
    assert x.ndim == 2 and len(x) >= 2, f"pca needs (N >= 2, D) points, got {x.shape}"
    assert 1 <= num_components <= x.shape[1], (num_components, x.shape)
    mean = x.mean(0)
    centred = x - mean  # (N, D)
    cov = centred.T @ centred / (len(x) - 1)  # (D, D)
    values, vectors = np.linalg.eigh(cov)  # ascending
    order = np.argsort(values)[::-1][:num_components]
    comps = vectors[:, order].T  # (k, D)
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    var = np.clip(values[order], 0.0, None)
    total = np.clip(values, 0.0, None).sum()
    return PCA(centred @ comps.T, comps, mean, var, var / total if total > 0 else np.zeros_like(var))


def tsne(points: np.ndarray, seed: int = 0, perplexity: Optional[float] = None) -> Optional[np.ndarray]:
    """A 2-D t-SNE embedding (N, 2) of ``points`` (N, D) by scikit-learn, or None when scikit-learn is
    not installed (it is the optional extra ``dvae[latent]``). ``perplexity``: default min(30, (N-1)/3)."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return None
    x = np.asarray(points, dtype=np.float64)
    assert x.ndim == 2 and len(x) >= 4, f"t-SNE needs at least 4 points, got {x.shape}"
    perplexity = perplexity or min(30.0, (len(x) - 1) / 3.0)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


# --- paths in latent space -----------------------------------------------------------------------
def lerp(z0: np.ndarray, z1: np.ndarray, num: int) -> np.ndarray:
    """``num`` points (num, D) on the segment from z0 to z1, both included."""
    t = np.linspace(0.0, 1.0, num)[:, None]  # (num, 1)
    return (1 - t) * np.asarray(z0, np.float64) + t * np.asarray(z1, np.float64)


def slerp(z0: np.ndarray, z1: np.ndarray, num: int) -> np.ndarray:
    """``num`` points (num, D) of spherical interpolation from z0 to z1, both included:
    sin((1 - t) w) / sin w z0 + sin(t w) / sin w z1, with w the angle between them (White 2016). The
    angle to z0 grows linearly in t; between unit vectors every point has unit norm. Falls back to
    :func:`lerp` when the two are (anti)parallel or one is zero (the great circle is not defined)."""
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    n0, n1 = np.linalg.norm(z0), np.linalg.norm(z1)
    if n0 == 0 or n1 == 0:
        return lerp(z0, z1, num)
    omega = np.arccos(np.clip(z0 @ z1 / (n0 * n1), -1.0, 1.0))
    if np.sin(omega) < 1e-6:
        return lerp(z0, z1, num)
    t = np.linspace(0.0, 1.0, num)[:, None]  # (num, 1)
    return (np.sin((1 - t) * omega) * z0 + np.sin(t * omega) * z1) / np.sin(omega)


def traverse(z: np.ndarray, dim: int, values: Sequence[float]) -> np.ndarray:
    """Copies of the code ``z`` (D,) with dimension ``dim`` set to each of ``values``: (len(values), D)."""
    z = np.asarray(z, np.float64)
    assert 0 <= dim < z.shape[-1], (dim, z.shape)
    out = np.repeat(z[None], len(values), 0)  # (n, D)
    out[:, dim] = values
    return out


@torch.no_grad()
def decode_codes(model, codes, num_steps: int, u: Optional[np.ndarray] = None) -> np.ndarray:
    """The emitter means (n, T, x_dim), model units, of the sequences generated from ``codes``
    (n, z_dim) by a model with one code per sequence (its Pyro site ``"z"`` conditioned on each code),
    under controls ``u`` (T, u_dim) or (n, T, u_dim) in the model's units (required when it has any)."""
    codes = torch.as_tensor(np.asarray(codes), dtype=torch.float32, device=model.device)
    n, T = codes.shape[0], num_steps
    assert codes.dim() == 2 and T >= 1, (codes.shape, T)
    x = torch.zeros(n, T, model.config.x_dim, device=model.device)  # (n, T, x_dim): not observed
    u_t = None
    if model.config.u_dim:
        if u is None:
            raise ValueError("this model takes controls: pass u of shape (num_steps, u_dim)")
        u_t = torch.as_tensor(np.asarray(u), dtype=torch.float32, device=model.device)
        u_t = u_t.expand(n, T, model.config.u_dim) if u_t.dim() == 2 else u_t
        assert u_t.shape == (n, T, model.config.u_dim), u_t.shape
    batch = SequenceBatch(x, u_t, torch.ones(n, T, dtype=torch.bool, device=model.device),
                          torch.full((n,), T, dtype=torch.long, device=model.device))
    was_training = model.training
    model.eval()
    program = poutine.condition(poutine.uncondition(model.model), data={"z": codes})
    trace = poutine.trace(program).get_trace(batch)
    model.train(was_training)
    site = trace.nodes.get("z")
    if site is None or site["value"].shape != codes.shape:
        raise ValueError(f"decoding a code needs a model with one latent code per sequence (vrae); "
                         f"{getattr(model, 'name', type(model).__name__)} has a latent per time step")
    means = torch.stack([trace.nodes[f"x_{t}"]["fn"].mean for t in range(T)], 1)  # (n, T, x_dim)
    return means.cpu().numpy()


# --- labels --------------------------------------------------------------------------------------
def pendulum_energy(xs: Sequence[np.ndarray]) -> np.ndarray:
    """Each episode's mean mechanical energy (N,), in Pendulum-v1's units (a rod with m = l = 1,
    g = 10, angle 0 upright): theta_dot^2 / 6 + 5 cos(theta), from obs = (cos theta, sin theta,
    theta_dot), averaged over the episode's steps."""
    out = []
    for x in xs:
        assert x.shape[-1] == 3, f"Pendulum observations have 3 dims, got {x.shape}"
        out.append(float(np.mean(x[:, 2] ** 2 / 6.0 + 5.0 * x[:, 0])))
    return np.asarray(out)


def sequence_labels(data, split: str, label: str = "auto"):
    """(values (N,), name) colouring the codes of ``data.subset(split)``. ``label``: ``auto`` (an .npz
    ``labels`` array if the file has one, else ``energy`` for Pendulum-v1 data, else ``length``),
    ``energy`` (:func:`pendulum_energy`), ``length``, ``index`` (the position in the file), or the name
    of an (N,) numeric array in the source .npz."""
    idx = data.indices(split)
    xs = [data.xs[i] for i in idx]
    arrays = _npz_arrays(data.source)
    if label == "auto":
        if "labels" in arrays:
            label = "labels"
        elif data.meta.get("env_id") == PENDULUM and data.x_dim == 3:
            label = "energy"
        else:
            label = "length"
    if label == "energy":
        return pendulum_energy(xs), "mean energy"
    if label == "length":
        return np.asarray([len(x) for x in xs], np.float64), "length"
    if label == "index":
        return np.asarray(idx, np.float64), "index"
    if label not in arrays:
        raise DataError(f"{data.source}: no per-sequence array {label!r} (choose auto, energy, length, index, "
                         f"or an (N,) array of the .npz)")
    values = arrays[label]
    if values.shape != (len(data.xs),) or not np.issubdtype(values.dtype, np.number):
        raise DataError(f"{data.source}: {label} must be a numeric array of shape ({len(data.xs)},), "
                         f"got {values.shape} {values.dtype}")
    return values[idx].astype(np.float64), label


def _npz_arrays(source: str) -> Dict[str, np.ndarray]:
    """The 1-D arrays of an .npz source (none for other sources)."""
    if not str(source).endswith(".npz") or not os.path.exists(source):
        return {}
    with np.load(source, allow_pickle=False) as f:
        return {k: f[k] for k in f.files if f[k].ndim == 1}


# --- plots ---------------------------------------------------------------------------------------
def plot_codes(points: np.ndarray, labels: np.ndarray, path: str, title: str, label_name: str,
               axis_names=("1", "2")) -> None:
    """A scatter of 2-D ``points`` (N, 2) coloured by ``labels`` (N,), saved to ``path``."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    sc = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="viridis", s=22, edgecolors="k", linewidths=0.3)
    fig.colorbar(sc, ax=ax, label=label_name)
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(title)
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)


def plot_decoded(panels: Dict[str, tuple], path: str, dim_names: Optional[List[str]] = None) -> None:
    """Decoded sequences, one column per panel and one row per observation dimension. ``panels``:
    title -> (curves (n, T, x_dim), values (n,), value name); curve i is coloured by values[i]."""
    first = next(iter(panels.values()))[0]
    x_dim = first.shape[-1]
    names = dim_names or [f"x[{d}]" for d in range(x_dim)]
    fig, axes = plt.subplots(x_dim, len(panels), figsize=(4.5 * len(panels), 1.9 * x_dim + 0.9),
                             sharex=True, squeeze=False, constrained_layout=True)
    for c, (title, (curves, values, value_name)) in enumerate(panels.items()):
        norm = plt.Normalize(float(np.min(values)), float(np.max(values)) + 1e-12)
        for d in range(x_dim):
            ax = axes[d, c]
            for curve, v in zip(curves, values):
                ax.plot(curve[:, d], color=plt.cm.viridis(norm(v)), lw=1.3)
            ax.set_ylabel(names[d])
        axes[0, c].set_title(title)
        axes[-1, c].set_xlabel("time step")
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes[:, c].tolist(), label=value_name)
    try:
        save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)


# --- everything on a data set --------------------------------------------------------------------
def latent_report(model, normalizer, data, split: str, out_dir: str, label: str = "auto",
                  pair: Optional[Sequence[int]] = None, dim: Optional[int] = None, num_points: int = 7,
                  span: float = 2.0, use_tsne: bool = True, seed: int = 0) -> dict:
    """Encode ``data.subset(split)`` (data units), map the codes to 2-D and, for a model with one code
    per sequence, interpolate and traverse; write PNGs into ``out_dir`` and return a JSON-able summary.

    ``pair`` (i, j): positions in the split of the two sequences to interpolate between (default: the
    ones with the lowest and the highest label). Decoding runs under zero controls in data units (the
    same controls for every code, so that only the code differs), for as many steps as sequence i.
    ``dim``: the latent dimension to traverse (default: the one whose posterior means vary most across
    the set), from sequence i's code, over ``span`` prior standard deviations either side of 0.
    """
    xs, us = data.subset(split)
    if len(xs) < 2:
        raise DataError(f"{data.source}: split {split!r} has {len(xs)} sequence(s); the latent map needs 2 or more")
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed)
    codes = sequence_codes(model, normalizer.x(xs), normalizer.u(us))  # (N, z_dim)
    labels, label_name = sequence_labels(data, split, label)
    idx = data.indices(split)
    name = getattr(model, "name", type(model).__name__)
    out = {"num_sequences": len(xs), "z_dim": int(codes.shape[1]), "label": label_name, "plots": []}
    k = min(2, codes.shape[1])
    p = pca(codes, k)
    points = p.scores if k == 2 else np.concatenate([p.scores, np.zeros((len(codes), 1))], 1)
    out["pca_explained_variance_ratio"] = p.ratio.tolist()
    path = os.path.join(out_dir, "latent_pca.png")
    plot_codes(points, labels, path, f"{name} codes, PCA ({100 * p.ratio.sum():.0f}% of the variance)", label_name,
               ("PC 1", "PC 2"))
    out["plots"].append(path)
    emb = tsne(codes, seed) if use_tsne and len(codes) >= 4 else None
    if emb is not None:
        path = os.path.join(out_dir, "latent_tsne.png")
        plot_codes(emb, labels, path, f"{name} codes, t-SNE", label_name, ("t-SNE 1", "t-SNE 2"))
        out["plots"].append(path)
        out["tsne"] = "done"
    else:
        out["tsne"] = ("skipped: --no-tsne" if not use_tsne else "skipped: fewer than 4 sequences"
                       if len(codes) < 4 else "skipped: scikit-learn is not installed (pip install dvae[latent])")

    i, j = (int(np.argmin(labels)), int(np.argmax(labels))) if pair is None else (int(pair[0]), int(pair[1]))
    if not (0 <= i < len(xs) and 0 <= j < len(xs)):
        raise ValueError(f"--pair {i} {j}: positions must lie in 0..{len(xs) - 1} (the split's sequences)")
    T = len(xs[i])
    u = None
    if model.config.u_dim:
        u = normalizer.u([np.zeros((T, model.config.u_dim), np.float32)])[0]  # (T, u_dim): zero torque
    try:
        decode_codes(model, codes[:1], 1, None if u is None else u[:1])
    except ValueError as e:
        out["interpolation"] = out["traversal"] = f"skipped: {e}"
        return out
    from dvae.eval.names import obs_names

    dim_names = obs_names(data.meta, data.x_dim, getattr(data, "source", None))  # units where known
    alpha = np.linspace(0.0, 1.0, num_points)  # 0: sequence i's code, 1: sequence j's
    decoded = {}
    for kind, fn in (("linear", lerp), ("spherical (slerp)", slerp)):
        path_codes = fn(codes[i], codes[j], num_points)  # (n, z_dim)
        curves = normalizer.x_inverse(decode_codes(model, path_codes, T, u))  # (n, T, x_dim), data units
        decoded[f"{kind} interpolation, {idx[i]} -> {idx[j]}"] = (curves, alpha, "alpha (0: seq i, 1: seq j)")
    path = os.path.join(out_dir, "latent_interpolation.png")
    plot_decoded(decoded, path, dim_names)
    out["plots"].append(path)
    out["interpolation"] = {"pair": [i, j], "pair_index": [idx[i], idx[j]],
                            "labels": [float(labels[i]), float(labels[j])], "num_steps": T, "num_points": num_points}
    d = int(np.argmax(codes.var(0))) if dim is None else int(dim)
    if not 0 <= d < codes.shape[1]:
        raise ValueError(f"--dim {d}: the latent has dimensions 0..{codes.shape[1] - 1}")
    values = np.linspace(-span, span, num_points)
    curves = normalizer.x_inverse(decode_codes(model, traverse(codes[i], d, values), T, u))
    path = os.path.join(out_dir, "latent_traversal.png")
    plot_decoded({f"traversal of z[{d}] from sequence {idx[i]}": (curves, values, f"z[{d}]")}, path, dim_names)
    out["plots"].append(path)
    out["traversal"] = {"dim": d, "values": values.tolist(), "from": idx[i]}
    return out
