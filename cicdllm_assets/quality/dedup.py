"""Exact and near-duplicate detection for question/answer pairs.

* Exact: the same normalised question *and* answer (case, whitespace and punctuation
  folded) — a hash comparison.
* Near: MinHash LSH (``datasketch``) over character 5-gram shingles of the normalised
  question + answer (char shingles tolerate the small rewordings of short texts);
  LSH proposes candidates at a lower threshold and the exact Jaccard of the shingle
  sets decides, so estimation noise neither hides nor invents duplicates;
  two pairs whose estimated Jaccard similarity reaches the threshold
  (``export.near_duplicate_threshold``, default 0.85) are near-duplicates.

Which pair survives is deterministic: candidates are visited in the caller's order
(callers sort by a stable key), and the first pair of each duplicate cluster is kept.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from datasketch import MinHash, MinHashLSH

NUM_PERM = 128
# LSH retrieves candidates at a lower threshold; the exact Jaccard of the shingle sets decides.
CANDIDATE_MARGIN = 0.15
SHINGLE_CHARS = 5
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class DuplicateOf:
    """Index ``index`` duplicates the kept pair at ``kept`` (``kind``: 'duplicate' | 'near_duplicate')."""

    index: int
    kept: int
    kind: str


def normalise(text: str) -> str:
    """Lower-case words joined by single spaces (punctuation and layout dropped)."""
    return " ".join(_WORD.findall(text.lower()))


def exact_key(question: str, answer: str) -> str:
    """Hash identifying a pair up to case, whitespace and punctuation."""
    payload = normalise(question) + "\x1f" + normalise(answer)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def shingles(text: str, size: int = SHINGLE_CHARS) -> set[bytes]:
    """Character ``size``-grams of the normalised text (the whole text if it is shorter)."""
    norm = normalise(text)
    if len(norm) <= size:
        return {norm.encode("utf-8")} if norm else set()
    return {norm[i : i + size].encode("utf-8") for i in range(len(norm) - size + 1)}


def jaccard(a: AbstractSet[bytes], b: AbstractSet[bytes]) -> float:
    """Exact Jaccard similarity of two shingle sets."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


@lru_cache(maxsize=8)
def _permutations(num_perm: int) -> Any:
    return MinHash(num_perm=num_perm, seed=1, scheme="affine32").permutations


def _minhash(parts: AbstractSet[bytes], num_perm: int) -> MinHash:
    # crc32 (C) instead of datasketch's default sha1 per shingle; permutations computed once.
    sketch = MinHash(num_perm=num_perm, seed=1, hashfunc=zlib.crc32, permutations=_permutations(num_perm),
                     scheme="affine32")
    if parts:
        sketch.update_batch(list(parts))
    return sketch


def find_duplicates(
    questions: Sequence[str],
    answers: Sequence[str],
    threshold: float,
    num_perm: int = NUM_PERM,
    groups: Sequence[str] | None = None,
    only_across_groups: bool = False,
) -> list[DuplicateOf]:
    """Duplicates among pairs, in input order; the first pair of a cluster is kept.

    With ``groups`` (e.g. repo names) and ``only_across_groups``, pairs only count as
    duplicates of pairs from *another* group (within-group duplicates were handled earlier).
    """
    if len(questions) != len(answers):
        raise ValueError("questions and answers must have the same length")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
    if groups is not None and len(groups) != len(questions):
        raise ValueError("groups must have one entry per pair")
    result: list[DuplicateOf] = []
    exact_seen: dict[str, list[int]] = {}
    lsh = MinHashLSH(threshold=max(0.05, threshold - CANDIDATE_MARGIN), num_perm=num_perm)

    # Shingle sets are recomputed for the (few) LSH candidates instead of kept for every
    # pair: memory stays at one MinHash signature per kept pair.
    @lru_cache(maxsize=4096)
    def pair_shingles(j: int) -> frozenset[bytes]:
        return frozenset(shingles(questions[j] + " \n " + answers[j]))

    def other_group(i: int, j: int) -> bool:
        return not only_across_groups or groups is None or groups[i] != groups[j]

    for i, (question, answer) in enumerate(zip(questions, answers, strict=True)):
        key = exact_key(question, answer)
        earlier = [j for j in exact_seen.get(key, []) if other_group(i, j)]
        if earlier:
            result.append(DuplicateOf(i, earlier[0], "duplicate"))
            continue
        exact_seen.setdefault(key, []).append(i)
        parts = pair_shingles(i)
        sketch = _minhash(parts, num_perm)
        matches = sorted(int(j) for j in lsh.query(sketch))
        near = [j for j in matches if other_group(i, j) and jaccard(parts, pair_shingles(j)) >= threshold]
        if near:
            result.append(DuplicateOf(i, near[0], "near_duplicate"))
            continue
        lsh.insert(i, sketch)
    return result


def similarity(a: str, b: str) -> float:
    """Exact Jaccard similarity of two texts' shingles (what the threshold is compared with)."""
    return jaccard(shingles(a), shingles(b))


__all__ = ["NUM_PERM", "DuplicateOf", "exact_key", "find_duplicates", "jaccard", "normalise", "shingles", "similarity"]
