"""Latent-space tools: codes of a set of sequences in 2-D, interpolation and traversal, decoded.

Works on the common model interface (``encode``, and the per-step Pyro program ``model``), so it
imports no model family:

- :func:`sequence_codes`: one code per sequence, (N, code_dim). For a model that declares a code per
  sequence (``DynamicalVAE.sequence_code``: the VRAE's z, the DSAE's static code v) it is the posterior
  mean of that code; for a model with latents per step only (DMM, VRNN, the static VAE, the LGSSM) it
  is the mean over the sequence's real steps of the posterior mean of z_t. The posterior mean is exact
  where the model exposes it (``code_posterior``; per step ``posterior_params``, or ``encode``'s
  ``loc``), otherwise the mean of ``num_samples`` posterior draws.
- :func:`pca` (numpy: the eigenvectors of the covariance) and :func:`tsne` (scikit-learn, an
  optional extra: ``pip install dvae[latent]``; None when it is not installed): 2-D maps of codes.
- :func:`lerp`, :func:`slerp` and :func:`traverse`: paths between or around codes;
  :func:`decode_codes`: the emitter means of the sequences a model generates from given codes (a
  model with a code per sequence: its declared site is conditioned on each code; its other latents,
  the DSAE's dynamic z_t, are drawn once and shared by every code: common random numbers).
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
    """One code per sequence, (N, code_dim), for sequences ``xs`` (L_i, x_dim) in the model's units
    (standardised as in training) and controls ``us`` (L_i, u_dim) or None; see the module docstring
    and :func:`code_name`."""
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
    return np.concatenate(codes, 0)  # (N, code_dim)


def code_name(model) -> str:
    """What :func:`sequence_codes` maps for ``model``: ``"SITE (per sequence)"`` for a model that declares
    a code per sequence (``sequence_code``), else ``"mean over steps of z_t"``."""
    site = getattr(model, "sequence_code", None)
    return "mean over steps of z_t" if site is None else f"{site} (per sequence)"


def _posterior_mean(model, batch: SequenceBatch, num_samples: int) -> torch.Tensor:
    """(B, code_dim): the posterior mean of the sequence's code, or of z_t averaged over real steps."""
    site = getattr(model, "sequence_code", None)
    if site is not None:  # one code per sequence: q(code | x, u) in closed form, else the draws' mean
        params = model.code_posterior(batch)
        if params is not None:
            return params[0]  # (B, code_dim)
        draws = model.encode(batch, num_samples=num_samples)
        if site not in draws or draws[site].shape[:2] != (num_samples, batch.batch_size) or draws[site].dim() != 3:
            raise ValueError(f"{getattr(model, 'name', type(model).__name__)}.encode must return its sequence code "
                             f"{site!r} as ({num_samples}, {batch.batch_size}, code_dim)")
        return draws[site].mean(0)  # (B, code_dim)
    if hasattr(model, "posterior_params"):  # q(z_t | x, u) in closed form (STORN)
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


def decode_problem(model) -> Optional[str]:
    """Why :func:`decode_codes` cannot decode codes of ``model`` (it declares no code per sequence), or None."""
    if getattr(model, "sequence_code", None) is not None:
        return None
    return (f"decoding a code needs a model with one latent code per sequence (vrae, dsae); "
            f"{getattr(model, 'name', type(model).__name__)} has a latent per time step")


@torch.no_grad()
def decode_codes(model, codes, num_steps: int, u: Optional[np.ndarray] = None,
                 seed: Optional[int] = None) -> np.ndarray:
    """The emitter means (n, T, x_dim), model units, of the sequences generated from ``codes``
    (n, code_dim) by a model with one code per sequence (its declared site ``model.sequence_code``, the
    VRAE's ``"z"`` or the DSAE's ``"v"``, conditioned on each code), under controls ``u`` (T, u_dim) or
    (n, T, u_dim) in the model's units (required when it has any).

    Common random numbers: the model's other latent sites (the DSAE's dynamic z_0 .. z_{T-1}, drawn
    from its prior p(z_t | z_{<t}, u), which does not read v) are drawn ONCE, by the program run on the
    first code and the first row's controls, and every code is decoded with that same draw (its sites
    conditioned on it), so that the rows differ only by what the code changes. ``seed``: that draw is
    made under ``torch.manual_seed(seed)`` (the same seed, the same draw: decodes of several paths share
    it); None: from the current random stream. Either way the caller's random stream is left as it was
    by the draw. The observation sites are drawn row by row (a model whose decoder reads its previous
    sample, the VRAE's feedback decoder, feeds those back); the means are of their distributions."""
    problem = decode_problem(model)
    if problem is not None:
        raise ValueError(problem)
    site = model.sequence_code
    codes = torch.as_tensor(np.asarray(codes), dtype=torch.float32, device=model.device)
    if codes.dim() != 2 or num_steps < 1:
        raise ValueError(f"decode_codes needs codes (n, code_dim) and num_steps >= 1, got {tuple(codes.shape)} "
                         f"and {num_steps}")
    n, T = codes.shape[0], num_steps
    u_t = None
    if model.config.u_dim:
        if u is None:
            raise ValueError("this model takes controls: pass u of shape (num_steps, u_dim)")
        u_t = torch.as_tensor(np.asarray(u), dtype=torch.float32, device=model.device)
        u_t = u_t.expand(n, T, model.config.u_dim) if u_t.dim() == 2 else u_t  # (n, T, u_dim)
        if u_t.shape != (n, T, model.config.u_dim):
            raise ValueError(f"u must have shape ({T}, {model.config.u_dim}) or ({n}, {T}, {model.config.u_dim}), "
                             f"got {tuple(u_t.shape)}")
    was_training = model.training
    model.eval()
    try:
        shared = _shared_latents(model, codes[:1], T, None if u_t is None else u_t[:1], seed)  # name -> (1, ...)
        data = {site: codes, **{k: v.expand((n,) + v.shape[1:]) for k, v in shared.items()}}  # (n, ...) each
        program = poutine.condition(poutine.uncondition(model.model), data=data)
        trace = poutine.trace(program).get_trace(_blank_batch(model, n, T, u_t))
    finally:
        model.train(was_training)
    node = trace.nodes.get(site)
    if node is None or node["type"] != "sample" or node["value"].shape != codes.shape:
        got = None if node is None else tuple(node["value"].shape)
        raise ValueError(f"{getattr(model, 'name', type(model).__name__)} declares the sequence code {site!r}, but "
                         f"its model's site {site!r} has shape {got}, not the codes' {tuple(codes.shape)}")
    means = torch.stack([trace.nodes[f"x_{t}"]["fn"].mean for t in range(T)], 1)  # (n, T, x_dim)
    return means.cpu().numpy()


def _blank_batch(model, n: int, T: int, u: Optional[torch.Tensor]) -> SequenceBatch:
    """n sequences of T steps, all real, with x zeros (unconditioned: not observed) and controls u (n, T, u_dim)."""
    x = torch.zeros(n, T, model.config.x_dim, device=model.device)  # (n, T, x_dim)
    return SequenceBatch(x, u, torch.ones(n, T, dtype=torch.bool, device=model.device),
                         torch.full((n,), T, dtype=torch.long, device=model.device))


def _shared_latents(model, code: torch.Tensor, T: int, u: Optional[torch.Tensor], seed: Optional[int]) -> dict:
    """One draw of every latent site of ``model.model`` other than its sequence code, by the program run on
    one row (``code`` (1, code_dim), ``u`` (1, T, u_dim) or None): name -> value (1, ...). The caller's
    random stream is left as it was; ``seed`` seeds the draw. Observation sites (observed in the model,
    drawn here) are not latents."""
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        program = poutine.condition(poutine.uncondition(model.model), data={model.sequence_code: code})
        trace = poutine.trace(program).get_trace(_blank_batch(model, 1, T, u))
    return {name: node["value"] for name, node in trace.nodes.items()
            if node["type"] == "sample" and name != model.sequence_code and not node["is_observed"]
            and not node["infer"].get("was_observed", False)}


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
    per sequence (``sequence_code``: the VRAE's z, the DSAE's v), interpolate and traverse; write PNGs
    into ``out_dir`` and return a JSON-able summary (``code``: which code was mapped, :func:`code_name`;
    ``code_dim`` its size; ``z_dim`` the size of z: the code's for the VRAE and per-step families).

    ``pair`` (i, j): positions in the split of the two sequences to interpolate between (default: the
    ones with the lowest and the highest label). Decoding runs under zero controls in data units and,
    for a model with latents besides its code (the DSAE's dynamic z_t), with one draw of those (seeded
    by ``seed``) for every code of every path (:func:`decode_codes`), so that only the code differs;
    for as many steps as sequence i. ``dim``: the code's dimension to traverse (default: the one whose
    posterior means vary most across the set), from sequence i's code, over ``span`` prior standard
    deviations either side of 0.
    """
    xs, us = data.subset(split)
    if len(xs) < 2:
        raise DataError(f"{data.source}: split {split!r} has {len(xs)} sequence(s); the latent map needs 2 or more")
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed)
    codes = sequence_codes(model, normalizer.x(xs), normalizer.u(us))  # (N, code_dim)
    labels, label_name = sequence_labels(data, split, label)
    idx = data.indices(split)
    name = getattr(model, "name", type(model).__name__)
    site = getattr(model, "sequence_code", None)
    code_dim = int(codes.shape[1])
    out = {"num_sequences": len(xs), "z_dim": code_dim if site in (None, "z") else int(model.config.z_dim),
           "code": code_name(model), "code_dim": code_dim, "label": label_name, "plots": []}
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
    problem = decode_problem(model)
    if problem is not None:
        out["interpolation"] = out["traversal"] = f"skipped: {problem}"
        return out
    from dvae.eval.names import obs_names

    dim_names = obs_names(data.meta, data.x_dim, getattr(data, "source", None))  # units where known
    alpha = np.linspace(0.0, 1.0, num_points)  # 0: sequence i's code, 1: sequence j's
    decoded = {}
    for kind, fn in (("linear", lerp), ("spherical (slerp)", slerp)):
        path_codes = fn(codes[i], codes[j], num_points)  # (n, code_dim)
        curves = normalizer.x_inverse(decode_codes(model, path_codes, T, u, seed))  # (n, T, x_dim), data units
        decoded[f"{kind} interpolation, {idx[i]} -> {idx[j]}"] = (curves, alpha, "alpha (0: seq i, 1: seq j)")
    path = os.path.join(out_dir, "latent_interpolation.png")
    plot_decoded(decoded, path, dim_names)
    out["plots"].append(path)
    out["interpolation"] = {"pair": [i, j], "pair_index": [idx[i], idx[j]],
                            "labels": [float(labels[i]), float(labels[j])], "num_steps": T, "num_points": num_points}
    d = int(np.argmax(codes.var(0))) if dim is None else int(dim)
    if not 0 <= d < codes.shape[1]:
        raise ValueError(f"--dim {d}: the code has dimensions 0..{codes.shape[1] - 1}")
    values = np.linspace(-span, span, num_points)
    curves = normalizer.x_inverse(decode_codes(model, traverse(codes[i], d, values), T, u, seed))
    path = os.path.join(out_dir, "latent_traversal.png")
    plot_decoded({f"traversal of {site}[{d}] from sequence {idx[i]}": (curves, values, f"{site}[{d}]")}, path,
                 dim_names)
    out["plots"].append(path)
    out["traversal"] = {"dim": d, "values": values.tolist(), "from": idx[i]}
    return out
