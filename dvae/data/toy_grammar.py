"""A tiny probabilistic grammar of English-like sentences, and the corpus the project ships from it.

    S       -> NP[n] VP[n] "."                      n: singular or plural, 1/2 each
    NP[n]   -> Det[n] (Adj) Noun[n] (PP)            Adj with p 0.4; PP with p 0.3 (subjects only)
    PP      -> Prep Det[m] (Adj) Noun[m]            m: its own number, 1/2 each
    VP[n]   -> Vi[n] (Adv)  |  Vt[n] Det[m] (Adj) Noun[m]      1/2 each; Adv with p 0.3

Every word is drawn uniformly from its class; the verb agrees in number with the subject's head
noun, across an optional prepositional phrase ("the dog near the cats sleeps ."), a dependency a
sequence model must carry over several tokens. The word classes are disjoint and each noun form
tells its number, so every sentence has exactly one derivation and its probability is the product
of the choices made: :func:`generate` returns that log-probability beside the sentence, which gives
the exact entropy of the source to hold a model's per-token bound against.

``python -m dvae.data.toy_grammar`` rewrites ``dvae/data/toy_corpus.txt`` (2000 sentences, seed 0);
``tests/data/test_text.py`` checks that the committed file is exactly what it writes.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import List, Tuple

import numpy as np

DET = {"sg": ["the", "a", "every"], "pl": ["the", "some", "many", "two"]}
ADJ = ["big", "small", "red", "old", "happy", "quiet"]
NOUN = {"sg": ["dog", "cat", "bird", "child", "farmer", "robot"],
        "pl": ["dogs", "cats", "birds", "children", "farmers", "robots"]}
PREP = ["near", "behind", "with"]
VI = {"sg": ["sleeps", "runs", "sings", "waits"], "pl": ["sleep", "run", "sing", "wait"]}
VT = {"sg": ["sees", "likes", "follows", "feeds"], "pl": ["see", "like", "follow", "feed"]}
ADV = ["quickly", "slowly", "today"]
P_ADJ, P_PP, P_ADV, P_TRANSITIVE = 0.4, 0.3, 0.3, 0.5
CORPUS = os.path.join(os.path.dirname(__file__), "toy_corpus.txt")


class _Draw:
    """Choices from a seeded generator, with the log-probability of the choices made so far."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.log_prob = rng, 0.0

    def coin(self, p: float) -> bool:
        yes = bool(self.rng.random() < p)
        self.log_prob += math.log(p if yes else 1 - p)
        return yes

    def word(self, words: List[str]) -> str:
        self.log_prob -= math.log(len(words))
        return words[int(self.rng.integers(len(words)))]


def _noun_phrase(d: _Draw, n: str, allow_pp: bool) -> List[str]:
    words = [d.word(DET[n])] + ([d.word(ADJ)] if d.coin(P_ADJ) else []) + [d.word(NOUN[n])]
    if allow_pp and d.coin(P_PP):
        m = "pl" if d.coin(0.5) else "sg"
        words += [d.word(PREP)] + _noun_phrase(d, m, allow_pp=False)
    return words


def sentence(d: _Draw) -> List[str]:
    """One sentence's tokens (the log-probability accumulates in ``d``)."""
    n = "pl" if d.coin(0.5) else "sg"
    words = _noun_phrase(d, n, allow_pp=True)
    if d.coin(P_TRANSITIVE):
        m = "pl" if d.coin(0.5) else "sg"
        words += [d.word(VT[n])] + _noun_phrase(d, m, allow_pp=False)
    else:
        words += [d.word(VI[n])] + ([d.word(ADV)] if d.coin(P_ADV) else [])
    return words + ["."]


def generate(num_sentences: int, seed: int = 0) -> List[Tuple[str, float]]:
    """``num_sentences`` sentences (space-joined) with their exact log-probabilities (nats)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_sentences):
        d = _Draw(rng)
        out.append((" ".join(sentence(d)), d.log_prob))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-sentences", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=CORPUS)
    a = ap.parse_args(argv)
    from dvae.files import write_text

    write_text(a.out, "".join(s + "\n" for s, _ in generate(a.num_sentences, a.seed)))


if __name__ == "__main__":
    main()
