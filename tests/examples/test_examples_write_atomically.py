"""Every file the examples write goes through the atomic writer (``dvae.files``: ``atomic_write``,
``write_json``, ``write_text``, ``save_figure``; ``envs.save_npz`` uses it too), so the class of issue
16's item 1 (a write that follows a symlink at the destination, or leaves a half-written file) stays
fixed in examples/: a raw ``open(..., "w")``, ``.savefig(``, ``np.save``/``np.savez`` or
``.write_text(``/``.write_bytes(`` in an example fails here, naming the file and the line."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

# open() with a mode that writes ("w", "a", "x" or "+" in it), positional or mode=
RAW_WRITES = [
    (re.compile(r"""\bopen\(.*?(?:,\s*|mode\s*=\s*)["'][rbt]*[wax+][rbt+]*["']"""), "open(..., 'w')"),
    (re.compile(r"\.savefig\("), ".savefig("),
    (re.compile(r"\bnp\.save(?:z|z_compressed|txt)?\("), "np.save("),
    (re.compile(r"\btorch\.save\("), "torch.save("),
    (re.compile(r"(?<!files)\.write_(?:text|bytes)\("), "Path.write_text/bytes("),
    (re.compile(r"\bjson\.dump\("), "json.dump("),
]


def raw_writes(text: str):
    """(line number, what) of each raw write in ``text`` (comments ignored)."""
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0]
        out += [(i, what) for rx, what in RAW_WRITES if rx.search(code)]
    return out


def test_the_pattern_catches_raw_writes_and_passes_the_atomic_writer():
    bad = ('with open(p, "w") as f:\n    json.dump(r, f)\nfig.savefig(path)\nnp.save(p, x)\nnp.savez(p, **d)\n'
           'open(p, mode="ab")\nPath(p).write_text(s)\ntorch.save(sd, p)\nopen(os.path.join(d, n), "w")\n')
    assert [i for i, _ in raw_writes(bad)] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    good = ('lines = open(CORPUS, encoding="utf-8").read()\nopen(p, "rb")\nsave_figure(fig, path, dpi=100)\n'
            'write_json(path, res, indent=2)\ndvae.files.write_text(p, s)\nsave_npz(path, data)  # np.save( in a comment\n')
    assert raw_writes(good) == []


def test_there_are_examples():
    assert len(EXAMPLES) >= 5, EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_writes_only_through_the_atomic_writer(path):
    found = raw_writes(path.read_text())
    assert not found, "; ".join(f"examples/{path.name}:{i}: {what} (use dvae.files: atomic_write, write_json, "
                                f"write_text or save_figure)" for i, what in found)
