"""The `python -m studies.compare` runner: sections run, stored per section, and the document rebuilt from them."""

import json
import sys
import types

import pytest

import studies.compare as compare
from studies.compare.cli import main


def _fake_section(key, value):
    """A section module whose run() reports ``value`` in its table."""
    mod = types.ModuleType(f"fake_section_{key}")

    def run(ctx):
        table = compare.markdown_table(["what", "value"], [["answer", value]])
        return compare.Section(key, f"Fake {key}", f"A table.\n\n{table}", {"value": value, "quick": ctx.quick})

    mod.run = run
    return mod


@pytest.fixture
def fake_sections(monkeypatch):
    monkeypatch.setattr(compare, "SECTIONS", {"one": "fake_section_one", "two": "fake_section_two"})
    values = {"one": 1.25, "two": 2.5}
    for key, v in values.items():
        monkeypatch.setitem(sys.modules, f"fake_section_{key}", _fake_section(key, v))
    return values


def test_sections_are_stored_and_the_document_is_rebuilt_from_them(tmp_path, fake_sections, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --work-dir is relative
    doc = tmp_path / "c.md"
    assert main(["--quick", "--out", str(doc), "--work-dir", str(tmp_path / "w")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["sections"]) == {"one", "two"}
    text = doc.read_text()
    assert "## Fake one" in text and "## Fake two" in text
    assert "| answer | 1.250 |" in text and "| answer | 2.500 |" in text
    assert text.index("## Fake one") < text.index("## Fake two")  # document order is SECTIONS order
    stored = json.loads((tmp_path / "c" / "one.json").read_text())
    assert stored["results"] == {"value": 1.25, "quick": True}
    assert stored["meta"]["command"].startswith("python -m studies.compare --quick")

    # re-running one section keeps the other's stored results
    compare_mod = sys.modules["fake_section_two"]
    compare_mod.run = _fake_section("two", 7.0).run
    assert main(["--sections", "two", "--out", str(doc)]) == 0
    capsys.readouterr()
    text = doc.read_text()
    assert "| answer | 1.250 |" in text and "| answer | 7.000 |" in text and "2.500" not in text
    assert json.loads((tmp_path / "c" / "two.json").read_text())["meta"]["command"] == \
        f"python -m studies.compare --sections two --out {doc}"

    # --sections none: only the document, from what is stored
    doc.unlink()
    assert main(["--sections", "none", "--out", str(doc)]) == 0
    assert "| answer | 7.000 |" in doc.read_text()


def test_unknown_section_and_corrupt_results_are_one_line_errors(tmp_path, fake_sections, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = tmp_path / "c.md"
    assert main(["--sections", "three", "--out", str(doc)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown section(s) three" in err[0]
    assert main(["--sections", "none", "--out", str(tmp_path / "cmp")]) == 2  # results and doc would clash
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out must name a markdown file" in err[0]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "one.json").write_text("{not json")
    assert main(["--sections", "two", "--out", str(doc)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one.json" in err[0] and "not a comparison section's results" in err[0]


def test_markdown_table_formats_floats_and_missing_values():
    t = compare.markdown_table(["a", "b", "c"], [["x", 1.0, float("nan")], ["y", 3, "z"]], fmt="{:.1f}")
    assert t.splitlines() == ["| a | b | c |", "|---|---:|---:|", "| x | 1.0 | n/a |", "| y | 3 | z |"]


def test_unknown_family_is_a_one_line_error(tmp_path, capsys):
    assert main(["--sections", "none", "--families", "dmm,nope", "--out", str(tmp_path / "c.md")]) == 2
    err = capsys.readouterr().err
    assert "--families: unknown family nope" in err and len(err.strip().splitlines()) == 1


def test_stored_sections_are_restated_with_every_family(tmp_path, capsys):
    """--sections none on the repository's stored results: their figures kept, every family without a
    result shown as not run yet with its command, never a number."""
    import shutil
    from pathlib import Path

    from dvae.models import MODELS

    src = Path(__file__).resolve().parents[2] / "docs" / "comparisons"
    shutil.copytree(src, tmp_path / "c")
    assert main(["--sections", "none", "--out", str(tmp_path / "c.md")]) == 0
    doc = (tmp_path / "c.md").read_text()
    stored = json.loads((src / "exact.json").read_text())["results"]["models"]
    for fam in MODELS:
        if fam in stored and fam != "lgssm":
            assert f"| {fam.upper()} ELBO | {stored[fam]['elbo']:.3f} |" in doc, fam
        elif fam not in stored:
            assert f"| {fam.upper()} | not run yet |" in doc, fam
    missing = [f for f in MODELS if f not in stored]
    if missing:
        assert f"--sections exact --families {','.join(missing)}`" in doc
    if not (src / "worldmodels.json").exists():
        assert "Not run yet (no stored results): `python -m studies.compare --sections worldmodels`." in doc


def test_a_section_stopped_part_way_keeps_what_it_stored(tmp_path, fake_sections, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def run(ctx):  # one family done and stored, then interrupted in the second
        ctx.partial(compare.Section("one", "Fake one", "A family.", {"models": {"dmm": 1.5}}))
        raise KeyboardInterrupt

    sys.modules["fake_section_one"].run = run
    doc = tmp_path / "c.md"
    assert main(["--sections", "one", "--out", str(doc), "--work-dir", str(tmp_path / "w")]) == 130
    stored = json.loads((tmp_path / "c" / "one.json").read_text())
    assert stored["results"] == {"models": {"dmm": 1.5}} and stored["meta"]["partial"] is True
    assert "Stopped part-way" in doc.read_text() and "A family." in doc.read_text()

    # run to the end: no longer partial
    sys.modules["fake_section_one"].run = _fake_section("one", 3.0).run
    assert main(["--sections", "one", "--out", str(doc), "--work-dir", str(tmp_path / "w")]) == 0
    stored = json.loads((tmp_path / "c" / "one.json").read_text())
    assert "partial" not in stored["meta"] and "Stopped part-way" not in doc.read_text()
