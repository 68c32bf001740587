"""``dvae collect``: trajectories of a Gymnasium env into an .npz (or shards and a manifest)."""

from __future__ import annotations

import os
import sys

import numpy as np

from dvae.commands.common import add_common


def add_collect(sub) -> None:
    p = sub.add_parser("collect", help="collect trajectories from a Gymnasium env into an .npz")
    p.add_argument("--env", required=True, help="Gymnasium env id, e.g. Pendulum-v1")
    p.add_argument("--episodes", type=int, required=True, help="episodes to collect")
    p.add_argument("--steps", type=int, required=True, help="actions per episode (observations: steps + 1)")
    p.add_argument("--policy", choices=["random", "ou"], default="random",
                   help="uniform random actions, or Ornstein-Uhlenbeck (smooth) for continuous actions")
    p.add_argument("--seed", type=int, default=0, help="seeds the env (episode i from seed + i) and the policy")
    p.add_argument("--out", required=True, help="output .npz (with --shards: a directory)")
    p.add_argument("--shards", type=int, default=None, metavar="K",
                   help="write K shard .npz files and a manifest.json into the directory --out, one shard "
                        "collected at a time (the same episodes as one file); train reads it lazily")
    add_common(p)


def cmd_collect(a) -> dict:
    from envs import collect, save_npz

    if a.episodes < 1 or a.steps < 1:
        raise ValueError("--episodes and --steps must be at least 1")
    if a.shards is not None:
        return collect_shards(a)
    data = collect(a.env, a.episodes, a.steps, policy=a.policy, seed=a.seed, progress=True)
    save_npz(a.out, data)
    return {"out": a.out, "env_id": a.env, "episodes": a.episodes, "steps": a.steps, "policy": a.policy,
            "seed": a.seed, "obs_shape": list(data["obs"].shape), "actions_shape": list(data["actions"].shape),
            "num_transitions": int(data["lengths"].sum())}


def collect_shards(a) -> dict:
    """``dvae collect --shards K``: K shards (episodes split as evenly as possible), each collected and
    written before the next (memory: one shard), then the manifest (written last: a directory with a
    manifest is complete)."""
    from dvae.data.lazy import write_manifest
    from envs import collect, save_npz

    if not 1 <= a.shards <= a.episodes:
        raise ValueError(f"--shards must lie between 1 and --episodes ({a.episodes})")
    if a.out.endswith(".npz"):
        raise ValueError("with --shards, --out is a directory (it gets manifest.json and the shards)")
    if os.path.exists(os.path.join(a.out, "manifest.json")):
        raise ValueError(f"{a.out}: already holds a manifest.json")
    names = [f"shard-{k:05d}.npz" for k in range(a.shards)]
    for name in names:  # never replaced (left by a collect that was stopped?); checked again as each is written
        if os.path.lexists(os.path.join(a.out, name)):
            raise ValueError(f"{os.path.join(a.out, name)}: already exists (left by an earlier collect?); remove "
                             "it or choose another --out")
    os.makedirs(a.out, exist_ok=True)
    bounds = np.linspace(0, a.episodes, a.shards + 1).round().astype(int)
    shards, transitions = [], 0
    for k in range(a.shards):
        first, n = int(bounds[k]), int(bounds[k + 1] - bounds[k])
        data = collect(a.env, n, a.steps, policy=a.policy, seed=a.seed, first_episode=first)
        data["first_episode"] = np.array(first, np.int64)
        name = names[k]
        save_npz(os.path.join(a.out, name), data, replace=False)
        shards.append({"file": name, "episodes": n, "first_episode": first})
        transitions += int(data["lengths"].sum())
        print(f"dvae collect: {name}: episodes {first}..{first + n - 1}", file=sys.stderr, flush=True)
    manifest = write_manifest(a.out, shards, {"env_id": a.env, "steps": a.steps, "policy": a.policy, "seed": a.seed})
    return {"out": a.out, "manifest": manifest, "shards": a.shards, "env_id": a.env, "episodes": a.episodes,
            "steps": a.steps, "policy": a.policy, "seed": a.seed, "obs_shape": [a.episodes] + list(data["obs"].shape[1:]),
            "actions_shape": [a.episodes] + list(data["actions"].shape[1:]), "num_transitions": transitions}
