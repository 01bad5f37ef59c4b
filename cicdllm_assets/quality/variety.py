"""Question variety: near-duplicate questions within a chunk, the mix of kinds, distinct-n.

* :func:`drop_near_duplicate_questions`: within one chunk (all its themes), a question whose
  character 5-gram Jaccard similarity (:func:`~cicdllm_assets.quality.dedup.similarity`) to an
  earlier kept question reaches :data:`QUESTION_NEAR_DUPLICATE` (0.7) is dropped before any
  answer is generated. Order: theme, then question index (the first one is kept).
* :func:`distinct_n`: distinct word n-grams / total word n-grams over a list of texts
  (1.0: no n-gram repeats; templated questions score low).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

from cicdllm_assets.quality.dedup import jaccard, shingles

QUESTION_NEAR_DUPLICATE = 0.7
_WORD = re.compile(r"\w+")


def drop_near_duplicate_questions(table: pa.Table, threshold: float = QUESTION_NEAR_DUPLICATE) -> tuple[pa.Table, int]:
    """``table`` (questions rows) without the near-duplicate questions of each chunk; and how many went."""
    rows = table.to_pylist()
    order = sorted(
        range(len(rows)),
        key=lambda i: (
            str(rows[i]["chunk_key"]),
            str(rows[i]["theme"]),
            int(rows[i].get("question_index") or 0),
            str(rows[i]["question_id"]),
        ),
    )
    kept_by_chunk: dict[str, list[set[bytes]]] = {}
    drop: set[int] = set()
    for i in order:
        grams = shingles(str(rows[i]["question"]))
        kept = kept_by_chunk.setdefault(str(rows[i]["chunk_key"]), [])
        if any(jaccard(grams, other) >= threshold for other in kept):
            drop.add(i)
        else:
            kept.append(grams)
    if not drop:
        return table, 0
    mask = pa.array([i not in drop for i in range(len(rows))], pa.bool_())
    return table.filter(mask), len(drop)


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct word ``n``-grams / all word ``n``-grams over ``texts`` (0.0 when there are none)."""
    vocabulary: dict[str, int] = {}
    seen: set[int] = set()  # each n-gram as one int (its word numbers, 32 bits each): no tuple per gram
    total = 0
    for text in texts:
        words = [vocabulary.setdefault(word, len(vocabulary)) for word in _WORD.findall(text.lower())]
        total += max(0, len(words) - n + 1)
        seen.update(_pack(gram) for gram in zip(*(words[k:] for k in range(n)), strict=False))
    return len(seen) / total if total else 0.0


def _pack(numbers: tuple[int, ...]) -> int:
    packed = 0
    for number in numbers:
        packed = (packed << 32) | number
    return packed


@dataclass(frozen=True)
class QuestionVariety:
    """The mix of question kinds and distinct-2/-3 over a set of questions."""

    questions: int
    kinds: dict[str, int]
    distinct_2: float
    distinct_3: float


def question_variety(questions: list[str], kinds: Iterable[str | None]) -> QuestionVariety:
    """Variety figures of ``questions`` (``kinds``: each one's kind, None/empty when unknown)."""
    mix = Counter(kind or "unknown" for kind in kinds)
    return QuestionVariety(
        len(questions), dict(sorted(mix.items())), distinct_n(questions, 2), distinct_n(questions, 3)
    )
