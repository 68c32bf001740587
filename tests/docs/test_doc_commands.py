"""Every ```bash block of README.md and docs/*.md runs, so no documented command goes stale.

The blocks of one file run in order, each with ``bash -e -o pipefail``, in one temporary working
directory per file (a later block may use an earlier one's files), with ``dvae`` and ``python`` on
PATH: this checkout's ``dvae`` (``PYTHONPATH``) and the interpreter running the tests. Both shrink
the command before running it (fewer epochs, episodes, samples; examples and benchmarks in their
smoke modes): the rules are in ``tests/docs/doc_shrink.py``, so the docs show the real sizes. A
block fails the test when any of its commands exits non-zero, and a block that ran no ``dvae`` or
``python`` command at all fails too (a command renamed out of reach would otherwise pass).

Comments just above a block (blank lines between allowed) steer it:

- ``<!-- skip-test: REASON -->``: not run; reported as skipped with REASON (a command for another
  machine, one that installs packages, a placeholder);
- ``<!-- slow-test: REASON -->``: run only under ``pytest -m slow`` (still shrunk): REASON says why
  it takes more than a few seconds even then;
- ``<!-- test-setup: COMMANDS -->``: shell run first, in the same directory (it makes the files a
  block takes as given: a run directory, a data file; ``$REPO`` is the checkout, for its files);
  shrunk as well;
- ``<!-- test-sub: OLD => NEW -->``: a placeholder replaced before running (``<timestamp>``, ``S``);
- ``<!-- test-needs: ../shared/PATH -->``: data the commands read without naming it (a default).

Commands written inline in the prose (`dvae plan RUN_DIR --env ID [--horizon H]`) hold placeholders
and are not run; their verbs and flags are checked against the command line's parser.

Optional arguments written in square brackets (``[--format csv]``) are run, without the brackets.
A command that reads ``../shared/`` data is skipped when that data is absent, and one that asks
for ``--device cuda`` when no GPU is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^(\s*)```(bash|sh|shell|console)\s*$")
MARK = re.compile(r"^\s*<!--\s*(skip-test|slow-test|test-setup|test-sub|test-needs):\s*(.+?)\s*-->\s*$")
OPTIONAL = re.compile(r"\[(--[^\[\]]+)\]")
SHARED = re.compile(r"(?<![\w/.])\.\./shared/(\S+)")
BLOCK_TIMEOUT = 600


@dataclass
class Block:
    line: int  # the first line of the block's body (1-based)
    source: str
    skip: Optional[str] = None
    slow: Optional[str] = None
    setup: List[str] = field(default_factory=list)
    subs: List[Tuple[str, str]] = field(default_factory=list)
    needs: List[str] = field(default_factory=list)


def shell_blocks(path: Path) -> List[Block]:
    """The ```bash (sh, shell, console) blocks of a markdown file, indented ones (in lists) included,
    with the marker comments just above each."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, start, body = len(m.group(1)), i + 1, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        block = Block(start + 1, "\n".join(body) + "\n")
        j = start - 2
        while j >= 0 and (not lines[j].strip() or MARK.match(lines[j])):
            mk = MARK.match(lines[j])
            if mk:
                kind, text = mk.groups()
                if kind == "skip-test":
                    block.skip = text
                elif kind == "slow-test":
                    block.slow = text
                elif kind == "test-setup":
                    block.setup.insert(0, text)
                elif kind == "test-needs":
                    block.needs.append(text)
                else:
                    if "=>" not in text:
                        raise ValueError(f"{path.name}:{j + 1}: test-sub needs 'OLD => NEW', got {text!r}")
                    old, new = (s.strip() for s in text.split("=>", 1))
                    block.subs.append((old, new))
            j -= 1
        out.append(block)
        i += 1
    return out


def prepared(block: Block) -> str:
    """The shell text that runs: setup first, placeholders replaced, [optional] flags unbracketed,
    ../shared/ made absolute (the commands run outside the checkout)."""
    text = "\n".join(block.setup + [block.source])
    for old, new in block.subs:
        text = text.replace(old, new)
    text = OPTIONAL.sub(r"\1", text)
    return SHARED.sub(lambda m: str((ROOT.parent / "shared" / m.group(1))), text)


def missing_requirement(text: str) -> Optional[str]:
    """Why a prepared block cannot run on this machine (None: it can)."""
    for m in re.finditer(re.escape(str(ROOT.parent / "shared")) + r"/[^\s'\"]+", text):
        if not os.path.exists(m.group(0).rstrip(";,)")):
            return f"needs {m.group(0)} (the shared data set), absent here"
    if re.search(r"--device[ =]cuda", text):
        import torch

        if not torch.cuda.is_available():
            return "needs a CUDA GPU (--device cuda), none here"
    return None


SHIM_DVAE = """#!{python}
import os, sys
sys.path.insert(0, {docs!r})
import doc_shrink
argv = doc_shrink.shrink_dvae(sys.argv[1:])
doc_shrink.log("dvae", sys.argv[1:], argv)
from dvae.cli import main
sys.exit(main(argv))
"""

SHIM_PYTHON = """#!{python}
import os, sys
sys.path.insert(0, {docs!r})
import doc_shrink
argv = doc_shrink.shrink_python(sys.argv[1:], {root!r}, os.getcwd())
doc_shrink.log("python", sys.argv[1:], argv)
os.execv({python!r}, [{python!r}] + argv)
"""


SHIM_TORCHRUN = """#!{python}
import os, sys
sys.path.insert(0, {docs!r})
import doc_shrink
argv = sys.argv[1:]
i = argv.index("dvae.cli") + 1 if "dvae.cli" in argv else len(argv)
shrunk = doc_shrink._cap(argv[:i], "--nproc_per_node", 2) + doc_shrink.shrink_dvae(argv[i:])
doc_shrink.log("torchrun", argv, shrunk)
os.execv({python!r}, [{python!r}, "-m", "torch.distributed.run"] + shrunk)
"""


def shims(directory: Path) -> Path:
    """A bin directory with the shrinking ``dvae``, ``python`` (and ``python3``) and ``torchrun``
    (``python -m torch.distributed.run``, at most 2 processes, the dvae command shrunk)."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(exist_ok=True)
    fmt = dict(python=sys.executable, docs=str(Path(__file__).parent), root=str(ROOT))
    for name, text in (("dvae", SHIM_DVAE), ("python", SHIM_PYTHON), ("python3", SHIM_PYTHON),
                       ("torchrun", SHIM_TORCHRUN)):
        p = bin_dir / name
        p.write_text(text.format(**fmt))
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def run_block(text: str, cwd: Path, bin_dir: Path, log: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, REPO=str(ROOT), PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
               DOC_COMMANDS_LOG=str(log), MPLBACKEND="Agg", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", text], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=BLOCK_TIMEOUT)


BLOCKS = [(p, b) for p in DOCS for b in shell_blocks(p)]
_DIRS: Dict[Path, Tuple[Path, Optional[int]]] = {}  # file -> (working directory, the line of a failed block)


def _param(path: Path, block: Block):
    marks = [pytest.mark.slow] if block.slow else []
    return pytest.param(path, block, marks=marks, id=f"{path.relative_to(ROOT)}:{block.line}")


# --- the parser and the shrinking, on hand-made cases --------------------------------------------------

def test_the_parser_reads_blocks_markers_and_indented_blocks(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("text\n```bash\ndvae eval r\n```\n\n<!-- skip-test: another machine -->\n\n```bash\nls\n```\n"
                  "- a list:\n\n  <!-- slow-test: minutes -->\n  <!-- test-setup: dvae train --out r -->\n"
                  "  <!-- test-sub: <ts> => 1 -->\n  ```bash\n  dvae eval r-<ts> [--format csv]\n  ```\n"
                  "```python\nx = 1\n```\n")
    a, b, c = shell_blocks(md)
    assert (a.line, a.source, a.skip, a.slow) == (3, "dvae eval r\n", None, None)
    assert (b.line, b.source, b.skip) == (9, "ls\n", "another machine")
    assert (c.line, c.source, c.slow, c.setup, c.subs) == (17, "dvae eval r-<ts> [--format csv]\n", "minutes",
                                                           ["dvae train --out r"], [("<ts>", "1")])
    assert prepared(c) == "dvae train --out r\ndvae eval r-1 --format csv\n"


def test_shrinking_lowers_sizes_and_keeps_the_rest():
    from doc_shrink import shrink_dvae, shrink_python

    assert shrink_dvae(["train", "--out", "r"]) == ["train", "--out", "r", "--epochs", "2", "--no-progress",
                                                    "--episodes", "12"]
    assert shrink_dvae(["train", "--data", "x.npz", "--epochs", "300", "--time-limit", "900"]) == \
        ["train", "--data", "x.npz", "--epochs", "2", "--time-limit", "20.0", "--no-progress"]
    assert shrink_dvae(["train", "--epochs=1", "--data", "x.npz"]) == ["train", "--epochs=1", "--data", "x.npz",
                                                                       "--no-progress"]
    assert shrink_dvae(["plan", "r", "--horizon", "25", "--num-samples", "200", "--episodes", "5"]) == \
        ["plan", "r", "--horizon", "5", "--num-samples", "16", "--episodes", "1", "--max-steps", "5"]
    assert shrink_dvae(["eval", "r", "--iw-samples", "64", "--context", "20"]) == \
        ["eval", "r", "--iw-samples", "4", "--context", "20"]
    assert shrink_dvae(["collect", "--episodes", "128", "--steps", "64"]) == ["collect", "--episodes", "12",
                                                                             "--steps", "64"]
    assert shrink_python(["examples/a.py", "--out", "o"], "/r", "/w") == ["/r/examples/a.py", "--out", "o", "--quick"]
    assert shrink_python(["examples/tokens_and_missing.py"], "/r", "/w") == ["/r/examples/tokens_and_missing.py",
                                                                             "--smoke"]
    assert shrink_python(["-c", "print(1)"], "/r", "/w") == ["-c", "print(1)"]
    assert shrink_python(["bench/b.py", "--budget", "900"], "/r", "/w") == ["/r/bench/b.py", "--budget", "2.0",
                                                                          "--quick", "--out", "/w/bench-results/b.json"]


def test_every_doc_block_is_found():
    """The docs have shell blocks, and every one is run, skipped with a reason, or slow with one."""
    assert len(BLOCKS) >= 20
    assert not [f"{p.name}:{b.line}" for p, b in BLOCKS if b.skip and b.slow], "a block is either skipped or slow"


def test_a_broken_command_fails_its_block(tmp_path):
    """The check the docs rely on: a doc command that breaks (a flag renamed) makes its block fail."""
    bin_dir, log = shims(tmp_path), tmp_path / "log.jsonl"
    bad = run_block("dvae collect --env Pendulum-v1 --episodes 200 --steps 4 --no-such-flag 3 --out a.npz\n",
                    tmp_path, bin_dir, log)
    assert bad.returncode != 0 and "--no-such-flag" in bad.stderr
    ran = [json.loads(line) for line in log.read_text().splitlines()]
    assert ran[-1]["shrunk"][ran[-1]["shrunk"].index("--episodes") + 1] == "12"  # shrunk on the way


# --- the docs' blocks -------------------------------------------------------------------------------

@pytest.mark.parametrize("path, block", [_param(p, b) for p, b in BLOCKS])
def test_shell_block_runs(path, block, tmp_path_factory):
    if block.skip is not None:
        pytest.skip(f"marked skip-test: {block.skip}")
    if path not in _DIRS:
        _DIRS[path] = (tmp_path_factory.mktemp(path.stem.replace(".", "-")), None)
    cwd, failed = _DIRS[path]
    text = prepared(block)
    why = missing_requirement("\n".join([text] + [prepared(Block(0, n)) for n in block.needs]))
    if why:
        pytest.skip(why)
    if failed is not None:
        pytest.fail(f"the block at line {failed} of the same file failed first (this one may use its files)")
    if "bench/" in text and not (cwd / "bench").exists():  # the results a benchmark block reads (and cd's into)
        shutil.copytree(ROOT / "bench", cwd / "bench", ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    log = cwd / f"commands-{block.line}.jsonl"
    r = run_block(text, cwd, shims(cwd), log)
    if r.returncode != 0:
        _DIRS[path] = (cwd, block.line)
    assert r.returncode == 0, (f"{path.relative_to(ROOT)}:{block.line}: exit status {r.returncode}\n--- ran:\n{text}"
                               f"--- stdout (end):\n{r.stdout[-2000:]}\n--- stderr (end):\n{r.stderr[-4000:]}")
    assert log.exists(), f"{path.relative_to(ROOT)}:{block.line}: no dvae or python command ran"


# --- command lines written in the prose -----------------------------------------------------------------

INLINE = re.compile(r"`(?:[A-Z_]+=\S+ )*dvae ([a-z/]+)((?: [^`]*)?)`")


def inline_commands(path: Path):
    """(line number, verbs, flags) of each `dvae VERB ...` written inline in a markdown file's prose
    (``dvae eval/score --data`` names two verbs)."""
    out, fenced = [], False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            for m in INLINE.finditer(line):
                out.append((n, m.group(1).split("/"), re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", m.group(2))))
    return out


def test_inline_commands_name_verbs_and_flags_that_exist():
    """The commands the prose tells people to type (`dvae plan RUN_DIR --env ID [--horizon H]`) are not
    run (their values are placeholders), but each verb and flag must exist: a renamed flag fails here."""
    import argparse

    from dvae.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    flags = {verb: {s for a in p._actions for s in a.option_strings} for verb, p in sub.choices.items()}  # noqa: SLF001
    found, wrong = 0, []
    for path in DOCS:
        for n, verbs, used in inline_commands(path):
            for verb in verbs:
                found += 1
                if verb not in flags:
                    wrong.append(f"{path.relative_to(ROOT)}:{n}: dvae {verb}: no such verb")
                    continue
                wrong += [f"{path.relative_to(ROOT)}:{n}: dvae {verb} {f}: no such flag" for f in used
                          if f not in flags[verb]]
    assert found >= 20, found
    assert not wrong, "\n".join(wrong)


def test_inline_parser_reads_verbs_and_flags(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("Run `dvae plan RUN_DIR --env ID [--horizon H]` or `dvae eval/score --data`.\n"
                  "```bash\ndvae `not inline`\n```\n`OMP_NUM_THREADS=1 dvae train --out runs/x`\n")
    assert inline_commands(md) == [(1, ["plan"], ["--env", "--horizon"]), (1, ["eval", "score"], ["--data"]),
                                   (5, ["train"], ["--out"])]
