"""Every ```python block of README.md and docs/*.md runs, so no doc goes stale.

The blocks of one file run in order in one namespace (a later block may use an earlier one's names),
in a temporary working directory. A block preceded by ``<!-- skip-test: REASON -->`` is not run; the
test reports it as skipped with that reason (a fragment, a placeholder path), never silently.

Shrunk for the suite (the blocks themselves show the real sizes): ``dvae.fit`` trains at most
``QUICK_EPOCHS`` epochs (the built-in pendulum source: ``QUICK_EPISODES`` episodes), and ``Run.plan``
plans at most ``QUICK_PLAN`` (steps, candidates, iterations, horizon) per episode, and ``Run.evaluate``
draws at most ``QUICK_EVAL`` importance samples and particles.
"""

import os
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
SKIP = re.compile(r"<!--\s*skip-test:\s*(.+?)\s*-->")
QUICK_EPOCHS, QUICK_EPISODES = 2, 16
QUICK_PLAN = dict(max_steps=5, num_samples=32, iterations=1, horizon=5)
QUICK_EVAL = dict(iw_samples=4, particles=16)


def python_blocks(path: Path):
    """(first line number, source, skip reason or None) of each ```python block of a markdown file."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            before = next((lines[j] for j in range(start - 2, -1, -1) if lines[j].strip()), "")
            m = SKIP.search(before)
            out.append((start + 1, "\n".join(body) + "\n", m.group(1) if m else None))
        i += 1
    return out


BLOCKS = [(p, line, source, reason) for p in DOCS for line, source, reason in python_blocks(p)]
_NAMESPACES = {}  # file -> (namespace, working directory, failed block or None): its blocks run in order


def test_the_parser_finds_blocks_and_skip_marks(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("text\n```python\na = 1\n```\n\n<!-- skip-test: a fragment -->\n\n```python\nb\n```\n```bash\nls\n```\n")
    assert python_blocks(md) == [(3, "a = 1\n", None), (9, "b\n", "a fragment")]


@pytest.fixture
def quick(monkeypatch):
    import dvae.api

    fit, plan, evaluate = dvae.api.fit, dvae.api.Run.plan, dvae.api.Run.evaluate

    def quick_fit(data, actions=None, **options):
        options["epochs"] = min(options.get("epochs") or 60, QUICK_EPOCHS)
        options.setdefault("no_progress", True)
        if isinstance(data, str) and data == "pendulum":
            options.setdefault("episodes", QUICK_EPISODES)
        return fit(data, actions, **options)

    def quick_plan(self, env_id, **kwargs):
        for k, v in QUICK_PLAN.items():
            kwargs[k] = min(kwargs.get(k, v), v)
        return plan(self, env_id, **kwargs)

    def quick_evaluate(self, *args, **kwargs):
        for k, v in QUICK_EVAL.items():
            if kwargs.get(k) is not None:
                kwargs[k] = min(kwargs[k], v)
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(dvae.api, "fit", quick_fit)
    monkeypatch.setattr(dvae.api.Run, "evaluate", quick_evaluate)
    monkeypatch.setattr(dvae.api.Run, "plan", quick_plan)
    monkeypatch.setenv("DVAE_DOCS_QUICK", "1")
    yield monkeypatch
    plt.close("all")


@pytest.mark.parametrize("path, line, source, reason", BLOCKS,
                         ids=[f"{p.relative_to(ROOT)}:{line}" for p, line, _, _ in BLOCKS])
def test_python_block_runs(path, line, source, reason, quick, tmp_path_factory):
    if path not in _NAMESPACES:
        _NAMESPACES[path] = ({"__name__": "__doc_block__"}, tmp_path_factory.mktemp(path.stem), None)
    namespace, cwd, failed = _NAMESPACES[path]
    if reason is not None:
        pytest.skip(f"marked skip-test: {reason}")
    if failed is not None:
        pytest.fail(f"the block at line {failed} of the same file failed first (this one may use its names)")
    quick.chdir(cwd)
    try:
        exec(compile(source, f"{path.relative_to(ROOT)}:{line}", "exec"), namespace)
    except Exception:
        _NAMESPACES[path] = (namespace, cwd, line)
        raise
