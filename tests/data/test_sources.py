"""The data layer's structure: no import cycles inside dvae/data, nothing imported from envs; built-in
SOURCE names come from the caller (the registry dvae.data.sources lists pendulum, loaded from envs.sources)."""

import ast
import os
import subprocess
import sys

import numpy as np
import pytest

from dvae.data import SequenceData, from_trajectories, load_source
from dvae.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "dvae", "data")


def _module_name(path):
    rel = os.path.relpath(path, ROOT)[:-len(".py")].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def import_graph(package_dir):
    """module -> the modules it imports (anywhere in it, inside functions too), for every .py file under
    ``package_dir``; ``from a import b`` counts as ``a.b`` when that is a module of the package."""
    modules = {}
    for d, _, files in os.walk(package_dir):
        for f in files:
            if f.endswith(".py"):
                modules[_module_name(os.path.join(d, f))] = os.path.join(d, f)
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        graph[name] = deps
    return graph


def find_cycle(graph):
    """A list of modules forming an import cycle among the graph's own modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if d not in graph or d == m:
                continue
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c", "numpy"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None


def test_dvae_data_has_no_import_cycle_and_imports_nothing_from_envs():
    graph = import_graph(DATA)
    assert {"dvae.data.sequences", "dvae.data.datasets", "dvae.data.lazy", "dvae.data.text"} <= set(graph)
    assert find_cycle(graph) is None, find_cycle(graph)
    envs_users = {m: sorted(d for d in deps if d == "envs" or d.startswith("envs.")) for m, deps in graph.items()}
    assert not any(envs_users.values()), envs_users
    assert graph["dvae.data.sequences"] & set(graph) == set()  # SequenceData depends on no loader


def test_importing_every_data_module_loads_no_envs_module():
    code = ("import sys, dvae.data, dvae.data.lazy, dvae.data.text, dvae.data.sequences, dvae.data.datasets; "
            "print(sorted(m for m in sys.modules if m == 'envs' or m.startswith('envs.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_builtin_names_are_the_callers():
    calls = []
    data = from_trajectories(np.arange(12, dtype=np.float32).reshape(3, 4, 1))

    def mine(seed, episodes, steps):
        calls.append((seed, episodes, steps))
        return data

    got = load_source("mine", seed=3, episodes=5, steps=7, builtins={"mine": mine})
    assert calls == [(3, 5, 7)] and got is data and got.source == "mine"
    with pytest.raises(DataError, match="mine: no such file, and no built-in sources given"):
        load_source("mine")
    with pytest.raises(DataError, match=r"yours: no such file, and not a built-in source \(mine\)"):
        load_source("yours", builtins={"mine": mine})


def test_pendulum_source_is_the_collected_episodes():
    from envs import collect
    from dvae.data.sources import BUILTIN_SOURCES, builtin_loader
    from envs.sources import load_pendulum
    from envs.sources import load_source as load_any_source

    assert BUILTIN_SOURCES == {"pendulum": "envs.sources:load_pendulum"}  # the one list of built-in names
    assert builtin_loader("pendulum") is load_pendulum
    data = load_any_source("pendulum", seed=1, episodes=3, steps=4)
    d = collect("Pendulum-v1", episodes=3, steps=4, policy="ou", seed=1)
    assert isinstance(data, SequenceData) and data.source == "pendulum" and data.kind == "continuous"
    assert len(data.xs) == 3 and data.x_dim == 3 and data.u_dim == 1
    for i in range(3):
        np.testing.assert_array_equal(data.xs[i], d["obs"][i])  # (5, 3): steps + 1 observations
        np.testing.assert_array_equal(data.us[i][:4], d["actions"][i])  # (4, 1) torques, then the unused last row
        assert data.us[i][4].tolist() == [0.0]
    assert data.meta == {"env_id": "Pendulum-v1", "seed": 1, "episodes": 3, "steps": 4, "policy": "ou"}


def test_every_reader_of_sources_takes_the_registry_names(tmp_path, monkeypatch):
    """A name added to the registry is a built-in source for the loader (through ``dvae.run.load_data``)
    and for the fingerprint (not a path: no absolute form, no fingerprint, nothing to check), and the
    registry's module imports nothing from ``envs``."""
    from dvae.data import fingerprint as fp
    from dvae.data import sources
    from dvae.run import DataConfig, RunConfig, load_data

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sources.BUILTIN_SOURCES, "levels", f"{__name__}:_levels")
    assert fp.absolute_source("levels") == "levels" and fp.fingerprint("levels") is None
    fp.check_unchanged("levels", 1, "0" * 64)  # a built-in: nothing recorded to check against
    data = load_data(RunConfig(data=DataConfig(source="levels", data_seed=3, episodes=2, steps=4)))
    assert data.source == "levels" and data.meta == {"seed": 3, "episodes": 2, "steps": 4}
    code = "import sys, dvae.run, dvae.data.fingerprint; assert not [m for m in sys.modules if m.startswith('envs')]"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _levels(seed, episodes, steps):
    xs = np.arange(episodes * (steps + 1), dtype=np.float32).reshape(episodes, steps + 1, 1)
    return from_trajectories(xs, None, None, "levels", {"seed": seed, "episodes": episodes, "steps": steps})
