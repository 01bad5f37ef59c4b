"""The out-of-core duplicate index decides exactly like a one-by-one MinHashLSH walk."""

from __future__ import annotations

import random

import duckdb
import pytest
from datasketch import MinHashLSH

from cicdllm_assets.quality import dedup
from cicdllm_assets.quality.dedup import CANDIDATE_MARGIN, NUM_PERM, DuplicateIndex, find_duplicates
from cicdllm_assets.quality.minhash import batch_signatures


def reference(questions: list[str], answers: list[str], threshold: float) -> list[tuple[int, int, str]]:
    """The sequential algorithm: exact keys, then an LSH of the kept pairs queried pair by pair."""
    result, exact_seen = [], {}
    lsh = MinHashLSH(threshold=max(0.05, threshold - CANDIDATE_MARGIN), num_perm=NUM_PERM)
    for i, (q, a) in enumerate(zip(questions, answers, strict=True)):
        key = dedup.exact_key(q, a)
        if key in exact_seen:
            result.append((i, exact_seen[key], "duplicate"))
            continue
        exact_seen[key] = i
        parts = dedup.shingles(q + " \n " + a)
        sketch = dedup._minhash(parts, NUM_PERM)
        near = [
            j
            for j in sorted(int(j) for j in lsh.query(sketch))
            if dedup.jaccard(parts, dedup.shingles(questions[j] + " \n " + answers[j])) >= threshold
        ]
        if near:
            result.append((i, near[0], "near_duplicate"))
            continue
        lsh.insert(i, sketch)
    return result


def corpus(seed: int, n: int) -> tuple[list[str], list[str]]:
    """Pairs built from a few templates with small edits: many exact, near and chained near duplicates."""
    rng = random.Random(seed)
    words = [
        "parse",
        "cache",
        "token",
        "stream",
        "buffer",
        "config",
        "index",
        "merge",
        "retry",
        "window",
        "schema",
        "commit",
    ]
    bases = [" ".join(rng.choice(words) for _ in range(18)) for _ in range(6)]
    questions, answers = [], []
    for _ in range(n):
        base = rng.choice(bases).split()
        for _ in range(rng.choice([0, 0, 1, 2, 4])):  # a few word edits: similarity around the threshold
            base[rng.randrange(len(base))] = rng.choice(words)
        questions.append(f"What does {rng.choice(words[:3])} do?")
        answers.append(" ".join(base))
    return questions, answers


@pytest.mark.parametrize(("seed", "threshold"), [(1, 0.85), (2, 0.85), (3, 0.7), (4, 1.0)])
def test_same_decisions_as_the_sequential_lsh(seed: int, threshold: float) -> None:
    questions, answers = corpus(seed, 300)
    expected = reference(questions, answers, threshold)
    got = [(d.index, d.kept, d.kind) for d in find_duplicates(questions, answers, threshold)]
    assert got == expected
    kinds = {kind for _, _, kind in expected}
    assert len(expected) > 50 and (kinds == {"duplicate"} if threshold == 1.0 else len(kinds) == 2)


def test_ids_in_any_batch_order_and_texts_from_a_table() -> None:
    questions, answers = corpus(5, 200)
    with duckdb.connect(":memory:") as con:
        con.execute("CREATE TABLE t AS SELECT * FROM (VALUES (0, '', '')) v(idx, question, answer) LIMIT 0")
        index = DuplicateIndex(con, 0.85, texts="t")
        ids = list(range(len(questions)))
        random.Random(0).shuffle(ids)
        for start in range(0, len(ids), 37):
            chunk = ids[start : start + 37]
            index.add(chunk, [questions[i] for i in chunk], [answers[i] for i in chunk])
            con.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, questions[i], answers[i]) for i in chunk])
        got = [(d.index, d.kept, d.kind) for d in index.duplicates(batch_rows=7)]
    assert got == reference(questions, answers, 0.85)


def test_batch_signatures_equal_datasketch_per_text() -> None:
    """The compiled batch MinHash gives datasketch's values bit for bit (ASCII, non-ASCII, short, empty)."""
    rng = random.Random(7)
    alphabet = "abcdef ghij klm \u00e9\u00df\u4e2d\u03a3"
    texts = [dedup.normalise("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))) for _ in range(400)]
    texts += ["", "a", "abcde", "abcdef", "\u00e9t\u00e9", "x" * 5000]
    expected = [dedup._minhash(dedup.shingles(t), NUM_PERM).hashvalues.tolist() for t in texts]
    permutations = dedup._permutations(NUM_PERM)
    assert batch_signatures(texts, permutations, dedup.SHINGLE_CHARS).tolist() == expected
    ascii_only = [i for i, t in enumerate(texts) if t.isascii()]
    assert 0 < len(ascii_only) < len(texts)
    got = batch_signatures([texts[i] for i in ascii_only], permutations, dedup.SHINGLE_CHARS).tolist()
    assert got == [expected[i] for i in ascii_only]
