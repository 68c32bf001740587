"""Token sequences from a text file: one sequence per line, a vocabulary built from the training split.

Each non-empty line of a UTF-8 file is one sequence of tokens: its whitespace-separated words
(``tokens="words"``) or its characters, spaces included (``tokens="chars"``); blank lines are
skipped, so sequence i is the i-th non-blank line. Lines are split into train/valid/test like the
episodes of an .npz (:func:`dvae.data.sequences.split_indices`).

Vocabulary (:class:`Vocabulary`): id 0 is ``<unk>``, id 1 is ``<eos>``, then every token seen at
least ``min_count`` times in the TRAINING split, by decreasing count (ties in code-point order).
Any other token (rarer, or only in valid/test or in another file) maps to ``<unk>``; with
``min_count`` > 1 the rare training tokens teach the model what ``<unk>`` costs. A literal ``<unk>``
in the text (the Penn Treebank habit) is the unknown token. A trained run keeps its vocabulary in
config.json (``vocab``), and every later load of text for it uses that one.

Each sequence ends with ``<eos>``: the models learn where sequences stop, generation is cut at it,
and the per-token bound counts it as a token (as language-model perplexities do). There is no
``<bos>``: every model starts from a learned initial state, and a constant first token would only
add a free, near-zero-cost step to the per-token average. There is no ``<pad>`` id either: padding
(after each sequence's end, see ``collate``) is an all-zero row, masked out by the step mask.

x is one-hot, (L_i + 1, V) float32 per sequence (``kind="categorical"``); the reason is given at
:func:`dvae.models.base.observation_dist`. The data set keeps only the token ids, (L_i + 1,) int64 per
sequence: ``xs`` is a :class:`dvae.data.lazy.LazySequences` view that one-hot encodes a sequence when
it is read (as a batch is collated), so memory at rest grows with the number of tokens, not tokens x
vocabulary. One sequence's one-hot, (L_i + 1) x V floats, must fit the size limit
(:func:`dvae.inputs.max_bytes`); a longer line is refused naming it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

import numpy as np

from dvae.data.sequences import SequenceData, split_indices
from dvae.data.lazy import LazySequences
from dvae.errors import DataError
from dvae.inputs import check_bytes, max_bytes, read_bytes

UNK, EOS = "<unk>", "<eos>"
UNK_ID, EOS_ID = 0, 1
TOKEN_MODES = ("words", "chars")


@dataclass
class Vocabulary:
    """The token of each id: ``tokens[0] == "<unk>"``, ``tokens[1] == "<eos>"``."""

    tokens: List[str]

    def __post_init__(self):
        if list(self.tokens[:2]) != [UNK, EOS] or len(set(self.tokens)) != len(self.tokens):
            raise ValueError(f"a vocabulary starts with {UNK!r}, {EOS!r} and has no duplicates")
        self.index = {tok: i for i, tok in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, sequences: Iterable[Sequence[str]], min_count: int = 1) -> "Vocabulary":
        """From token sequences (the training split): tokens seen at least ``min_count`` times, most
        frequent first, ties in code-point order."""
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        counts = Counter(tok for seq in sequences for tok in seq)
        kept = sorted((t for t, c in counts.items() if c >= min_count and t not in (UNK, EOS)),
                      key=lambda t: (-counts[t], t))
        return cls([UNK, EOS] + kept)

    def encode(self, seq: Sequence[str]) -> np.ndarray:
        """Token ids (L + 1,) int64 of a sequence, unknown tokens as ``<unk>``, ``<eos>`` appended."""
        return np.array([self.index.get(tok, UNK_ID) for tok in seq] + [EOS_ID], dtype=np.int64)

    def one_hot(self, seq: Sequence[str]) -> np.ndarray:
        """(L + 1, V) float32 one-hot rows of :meth:`encode`."""
        ids = self.encode(seq)
        x = np.zeros((len(ids), len(self)), dtype=np.float32)
        x[np.arange(len(ids)), ids] = 1.0
        return x

    def decode(self, ids: Iterable[int], stop_at_eos: bool = True) -> List[str]:
        """Tokens of ids, up to (not including) the first ``<eos>`` when ``stop_at_eos``."""
        out = []
        for i in ids:
            i = int(i)
            if stop_at_eos and i == EOS_ID:
                break
            out.append(self.tokens[i])
        return out


def tokenize(line: str, tokens: str = "words") -> List[str]:
    """A line's tokens: whitespace-split words, or its characters (without the line ending)."""
    if tokens == "words":
        return line.split()
    if tokens == "chars":
        return list(line.rstrip("\r\n"))
    raise ValueError(f"unknown token mode {tokens!r} (choose {' or '.join(TOKEN_MODES)})")


def join(tokens: List[str], mode: str = "words") -> str:
    """A decoded sequence as text: words joined by spaces, characters concatenated."""
    return "".join(tokens) if mode == "chars" else " ".join(tokens)


def read_lines(path: str, tokens: str = "words") -> List[List[str]]:
    """The token sequences of a text file's non-blank lines (DataError naming the file and line)."""
    # a regular file of at most a 16th of the size limit: its tokens as Python strings take many times that
    raw = read_bytes(path, "text file", max_bytes() // 16)
    seqs = []
    for n, line in enumerate(raw.split(b"\n"), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: line {n} is not UTF-8 text (byte {e.start})") from None
        toks = tokenize(text, tokens)
        if toks and (tokens == "words" or text.strip()):
            seqs.append(toks)
    if not seqs:
        raise DataError(f"{path}: no non-blank line (expected one token sequence per line)")
    return seqs


def load_text(path: str, tokens: str = "words", min_count: int = 1, vocab: Optional[List[str]] = None,
              seed: int = 0) -> SequenceData:
    """Load token sequences (one per non-blank line) as one-hot SequenceData, ``kind="categorical"``.

    ``vocab``: the token list of a trained run (used as is); None: built from the training split
    with ``min_count``. The split is by line, deterministic (``seed``)."""
    if tokens not in TOKEN_MODES:
        raise DataError(f"{path}: unknown token mode {tokens!r} (choose {' or '.join(TOKEN_MODES)})")
    seqs = read_lines(path, tokens)
    splits = split_indices(len(seqs), seed)
    if vocab is None:
        voc = Vocabulary.build([seqs[i] for i in splits["train"]], min_count)
    else:
        try:
            voc = Vocabulary(list(vocab))
        except ValueError as e:
            raise DataError(f"{path}: the run's vocabulary is not valid ({e})") from None
    ids = [voc.encode(s) for s in seqs]  # each (L_i + 1,) token ids; one-hot only when read
    lengths = np.array([len(i) for i in ids], np.int64)  # (N,)
    longest = int(np.argmax(lengths))
    check_bytes(4 * int(lengths[longest]) * len(voc), f"the one-hot of sequence {longest} (non-blank line "
                f"{longest + 1}: {lengths[longest]} tokens with <eos>, x a vocabulary of {len(voc)})", path)
    width = len(voc)

    def one_hot(row: np.ndarray) -> np.ndarray:
        x = np.zeros((len(row), width), dtype=np.float32)  # (L_i + 1, V)
        x[np.arange(len(row)), row] = 1.0
        return x

    xs = LazySequences(ids.__getitem__, np.arange(len(ids)), lengths, one_hot)
    num_unk = sum(int((i == UNK_ID).sum()) for i in ids)
    meta = {"format": "text", "tokens": tokens, "num_unk": num_unk}
    return SequenceData(xs, None, splits, "categorical", path, meta, vocab=list(voc.tokens))
