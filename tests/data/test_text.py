"""The text loader (vocabulary, <unk>, <eos>, padding) and the corpus the project ships; NaN as missing."""

import numpy as np
import pytest
import torch

from dvae.data import Normalizer, collate, from_trajectories, load_source
from dvae.data.text import EOS_ID, UNK_ID, Vocabulary, load_text
from dvae.data.toy_grammar import CORPUS, generate, main
from dvae.errors import DataError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


def test_the_committed_corpus_is_what_the_grammar_script_writes(tmp_path):
    out = tmp_path / "corpus.txt"
    main(["--out", str(out)])
    assert out.read_bytes() == open(CORPUS, "rb").read()
    sentences = generate(3)
    assert all(s.endswith(" .") and lp < 0 for s, lp in sentences)


def test_vocabulary_comes_from_the_training_split_and_other_tokens_are_unk(tmp_path):
    lines = [f"a b a c{i}" for i in range(10)]  # 10 lines: split 8 / 1 / 1
    data = load_text(write(tmp_path, "t.txt", "\n".join(lines) + "\n\n"))
    train = data.splits["train"]
    assert len(data.xs) == 10 and data.kind == "categorical"  # the blank line is skipped
    # ids: <unk>, <eos>, then by count (a: 16, b: 8), then the singletons c_i of the training lines in order
    assert data.vocab[:4] == ["<unk>", "<eos>", "a", "b"]
    assert sorted(data.vocab[4:]) == sorted(f"c{i}" for i in train) and len(data.vocab) == 4 + len(train)
    for i, x in enumerate(data.xs):
        ids = x.argmax(1)
        assert x.shape == (5, len(data.vocab)) and (x.sum(1) == 1).all()  # one-hot, with <eos> appended
        assert ids[-1] == EOS_ID and list(ids[:3]) == [2, 3, 2]
        assert (ids[3] == UNK_ID) == (i not in train)  # c_i is known only from the training lines


def test_min_count_and_a_runs_vocabulary_map_rare_and_unseen_tokens_to_unk(tmp_path):
    path = write(tmp_path, "t.txt", "x x y\n" * 9 + "x z\n")
    data = load_text(path, min_count=10)
    assert data.vocab == ["<unk>", "<eos>", "x"]
    again = load_text(write(tmp_path, "u.txt", "x q y\n"), vocab=data.vocab)
    assert again.xs[0].argmax(1).tolist() == [2, UNK_ID, UNK_ID, EOS_ID] and again.x_dim == 3
    voc = Vocabulary(data.vocab)
    assert voc.decode([2, 0, 2, EOS_ID, 2]) == ["x", "<unk>", "x"]


def test_chars_mode_reads_characters_and_a_source_string_selects_the_loader(tmp_path):
    path = write(tmp_path, "chars.dat", "ab a\n  \nba\n")
    data = load_source(f"text:{path}", tokens="chars")
    assert len(data.xs) == 2  # the line of spaces is blank; with 2 sequences every split holds both
    assert data.vocab == ["<unk>", "<eos>", "a", "b", " "]  # a: 3, b: 2, space: 1
    assert Vocabulary(data.vocab).decode(data.xs[0].argmax(1)) == list("ab a")


def test_padding_rows_are_zero_and_masked(tmp_path):
    data = load_text(write(tmp_path, "t.txt", "a b c d\na\n"))
    b = collate([torch.from_numpy(x) for x in data.xs])
    assert b.lengths.tolist() == [5, 2] and b.mask[1].tolist() == [True, True, False, False, False]
    assert (b.x[1, 2:] == 0).all() and b.obs_mask is None


@pytest.mark.parametrize("content, message", [
    (b"ok line\n\xff\xfe bad\n", r"line 2 is not UTF-8"),
    (b"\n  \n", r"no non-blank line"),
])
def test_bad_text_is_reported_with_the_file_and_line(tmp_path, content, message):
    with pytest.raises(DataError, match=message):
        load_text(write(tmp_path, "bad.txt", content))


# --- NaN: bad input, unless missing data was asked for -----------------------------------------------
def test_nan_is_refused_unless_missing_and_inf_always():
    obs = np.zeros((3, 5, 2))
    obs[1, 2, 0] = np.nan
    with pytest.raises(DataError, match=r"sequence 1, step 2, dim 0 \(a NaN is a missing entry only with --missing nan\)"):
        from_trajectories(obs)
    data = from_trajectories(obs, missing=True)
    assert np.isnan(data.xs[1][2, 0]) and np.isnan(data.xs[1]).sum() == 1
    obs[0, 1, 1] = np.inf
    with pytest.raises(DataError, match=r"inf .*sequence 0, step 1, dim 1"):
        from_trajectories(obs, missing=True)


def test_normalizer_statistics_leave_missing_entries_out():
    xs = [np.array([[1.0, np.nan], [3.0, 2.0]]), np.array([[np.nan, 4.0]])]
    norm = Normalizer.fit(xs)
    assert norm.x_mean == [2.0, 3.0] and norm.x_std == [1.0, 1.0]
    assert np.isnan(norm.x(xs)[0][0, 1])
    with pytest.raises(ValueError, match="dimension 1 has no observed entry"):
        Normalizer.fit([np.array([[1.0, np.nan]])])
