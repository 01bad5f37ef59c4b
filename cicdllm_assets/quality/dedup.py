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

State lives in DuckDB tables (:class:`DuplicateIndex`), so the export can deduplicate
millions of pairs in bounded memory; :func:`find_duplicates` runs the same code on lists.
"""

from __future__ import annotations

import hashlib
import heapq
import re
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from datasketch import MinHash, MinHashLSH

from cicdllm_assets.quality.minhash import batch_signatures

NUM_PERM = 128
# LSH retrieves candidates at a lower threshold; the exact Jaccard of the shingle sets decides.
CANDIDATE_MARGIN = 0.15
SHINGLE_CHARS = 5
_WORD = re.compile(r"\w+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ADD_BATCH = 2_000
SHINGLE_CACHE = 512  # shingle sets of recent candidates (bounded: ~15 KB each)


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
    return _key(normalise(question), normalise(answer))


def _key(norm_question: str, norm_answer: str) -> str:
    return hashlib.sha256((norm_question + "\x1f" + norm_answer).encode("utf-8")).hexdigest()


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
    sketch = MinHash(
        num_perm=num_perm, seed=1, hashfunc=zlib.crc32, permutations=_permutations(num_perm), scheme="affine32"
    )
    if parts:
        sketch.update_batch(list(parts))
    return sketch


class DuplicateIndex:
    """Duplicate detection over any number of pairs, with state in DuckDB tables (spills to disk).

    Pairs are added in batches with increasing-or-not integer ids; the id order is the
    visiting order. Per pair only its exact key and its LSH band hashes are stored; the
    texts of the (few) LSH candidates are read back from ``texts`` (a table or view with
    ``idx, question, answer``; by default the index stores them itself).

    Same outcome as visiting the pairs one by one with a ``MinHashLSH`` of the kept pairs:
    a pair is an exact duplicate of the first earlier pair with its key; otherwise a
    near-duplicate of the first earlier *kept* pair that shares an LSH band and whose exact
    Jaccard reaches the threshold; otherwise kept. Bands are compared by a 64-bit hash of
    their values (a collision only adds a candidate, which the exact Jaccard then judges).
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        threshold: float,
        num_perm: int = NUM_PERM,
        texts: str | None = None,
        prefix: str = "dedup",
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        for name in (prefix, texts or prefix):
            if not _IDENTIFIER.fullmatch(name):
                raise ValueError(f"not a plain SQL identifier: {name!r}")
        self.con, self.threshold, self.num_perm, self.prefix = con, threshold, num_perm, prefix
        lsh = MinHashLSH(threshold=max(0.05, threshold - CANDIDATE_MARGIN), num_perm=num_perm)
        self.ranges: list[tuple[int, int]] = list(lsh.hashranges)
        self.multipliers = np.random.default_rng(20240601).integers(1, 2**63, size=num_perm, dtype=np.uint64) | 1
        self.texts = texts or f"{prefix}_texts"
        self.size = 0
        con.execute(f"CREATE OR REPLACE TABLE {prefix}_keys (idx BIGINT, ekey VARCHAR)")
        con.execute(f"CREATE OR REPLACE TABLE {prefix}_bands (idx BIGINT, band SMALLINT, h UBIGINT)")
        if texts is None:
            con.execute(f"CREATE OR REPLACE TABLE {self.texts} (idx BIGINT, question VARCHAR, answer VARCHAR)")

    def add(self, ids: Sequence[int], questions: Sequence[str], answers: Sequence[str]) -> None:
        """Index one batch of pairs."""
        if not len(ids) == len(questions) == len(answers):
            raise ValueError("ids, questions and answers must have the same length")
        if not ids:
            return
        keys = []
        texts = []
        for question, answer in zip(questions, answers, strict=True):
            norm_q, norm_a = normalise(question), normalise(answer)
            keys.append(_key(norm_q, norm_a))
            texts.append(f"{norm_q} {norm_a}" if norm_q and norm_a else norm_q or norm_a)  # = normalise(q + " \n " + a)
        signatures = batch_signatures(texts, _permutations(self.num_perm), SHINGLE_CHARS)
        mixed = signatures * self.multipliers  # uint64 arithmetic wraps: a cheap 64-bit band hash
        id_array = pa.array(list(ids), pa.int64())
        keys_batch = pa.table({"idx": id_array, "ekey": pa.array(keys, pa.string())})
        bands = pa.table(
            {
                "idx": pa.concat_arrays([id_array] * len(self.ranges)),
                "band": pa.array(np.repeat(np.arange(len(self.ranges), dtype=np.int16), len(ids))),
                "h": pa.array(
                    np.concatenate([mixed[:, start:end].sum(axis=1, dtype=np.uint64) for start, end in self.ranges])
                ),
            }
        )
        self.con.register("dedup_keys_in", keys_batch)
        self.con.register("dedup_bands_in", bands)
        self.con.execute(f"INSERT INTO {self.prefix}_keys SELECT * FROM dedup_keys_in")  # noqa: S608
        self.con.execute(f"INSERT INTO {self.prefix}_bands SELECT * FROM dedup_bands_in")  # noqa: S608
        if self.texts == f"{self.prefix}_texts":
            texts = pa.table(
                {
                    "idx": id_array,
                    "question": pa.array(list(questions), pa.string()),
                    "answer": pa.array(list(answers), pa.string()),
                }
            )
            self.con.register("dedup_texts_in", texts)
            self.con.execute(f"INSERT INTO {self.texts} SELECT * FROM dedup_texts_in")  # noqa: S608
            self.con.unregister("dedup_texts_in")
        self.con.unregister("dedup_keys_in")
        self.con.unregister("dedup_bands_in")
        self.size = max(self.size, max(ids) + 1)

    def duplicates(self, batch_rows: int = 10_000) -> Iterator[DuplicateOf]:
        """Every duplicate, in id order (exact and near merged)."""
        p = self.prefix
        self.con.execute(f"""
            CREATE OR REPLACE TABLE {p}_exact AS
            SELECT idx, first FROM (SELECT idx, min(idx) OVER (PARTITION BY ekey) AS first FROM {p}_keys)
            WHERE idx <> first""")  # noqa: S608 - identifiers checked in __init__
        # colliding band hashes, one band at a time: each query groups one hash per pair, not one per band
        self.con.execute(f"CREATE OR REPLACE TABLE {p}_coll (idx BIGINT, band SMALLINT, h UBIGINT)")
        for band in range(len(self.ranges)):
            self.con.execute(
                f"""
                INSERT INTO {p}_coll
                WITH live AS (SELECT b.idx, b.h FROM {p}_bands b ANTI JOIN {p}_exact e ON b.idx = e.idx
                              WHERE b.band = $band)
                SELECT live.idx, $band, live.h FROM live
                JOIN (SELECT h FROM live GROUP BY h HAVING count(*) > 1) c USING (h)""",  # noqa: S608
                {"band": band},
            )
        self.con.execute(f"""
            CREATE OR REPLACE TABLE {p}_cand AS
            SELECT DISTINCT a.idx AS i, b.idx AS j FROM {p}_coll a
            JOIN {p}_coll b ON a.band = b.band AND a.h = b.h AND b.idx < a.idx""")  # noqa: S608
        exact = self._stream(f"SELECT idx, first FROM {p}_exact ORDER BY idx", batch_rows)  # noqa: S608
        exact_dups = (DuplicateOf(int(i), int(first), "duplicate") for i, first in exact)
        candidates = self._stream(
            f"""SELECT c.i, c.j, ti.question, ti.answer, tj.question, tj.answer FROM {p}_cand c
                JOIN {self.texts} ti ON ti.idx = c.i JOIN {self.texts} tj ON tj.idx = c.j ORDER BY c.i, c.j""",  # noqa: S608
            batch_rows,
        )
        yield from heapq.merge(exact_dups, self._near(candidates), key=lambda d: d.index)

    def _stream(self, sql: str, batch_rows: int) -> Iterator[tuple[Any, ...]]:
        # a cursor of its own: the exact and near streams are read interleaved
        for batch in self.con.cursor().sql(sql).to_arrow_reader(batch_rows):
            yield from zip(*(column.to_pylist() for column in batch.columns), strict=True)

    def _near(self, candidates: Iterator[tuple[Any, ...]]) -> Iterator[DuplicateOf]:
        """Walk candidate pairs in (i, j) order; ``kept`` holds the verdicts so far."""
        kept = np.ones(self.size, dtype=bool)
        cache: OrderedDict[int, frozenset[bytes]] = OrderedDict()

        def parts(idx: int, question: str, answer: str) -> frozenset[bytes]:
            found = cache.get(idx)
            if found is None:
                found = cache[idx] = frozenset(shingles((question or "") + " \n " + (answer or "")))
                if len(cache) > SHINGLE_CACHE:
                    cache.popitem(last=False)
            else:
                cache.move_to_end(idx)
            return found

        decided = -1
        for i, j, question_i, answer_i, question_j, answer_j in candidates:
            if i == decided or not kept[j]:
                continue
            if jaccard(parts(i, question_i, answer_i), parts(j, question_j, answer_j)) >= self.threshold:
                kept[i] = False
                decided = i
                yield DuplicateOf(int(i), int(j), "near_duplicate")


def find_duplicates(
    questions: Sequence[str],
    answers: Sequence[str],
    threshold: float,
    num_perm: int = NUM_PERM,
) -> list[DuplicateOf]:
    """Duplicates among in-memory pairs, in input order; the first pair of a cluster is kept."""
    if len(questions) != len(answers):
        raise ValueError("questions and answers must have the same length")
    with duckdb.connect(":memory:") as con:
        index = DuplicateIndex(con, threshold, num_perm)
        for start in range(0, len(questions), ADD_BATCH):
            end = min(start + ADD_BATCH, len(questions))
            index.add(list(range(start, end)), questions[start:end], answers[start:end])
        return list(index.duplicates())


def similarity(a: str, b: str) -> float:
    """Exact Jaccard similarity of two texts' shingles (what the threshold is compared with)."""
    return jaccard(shingles(a), shingles(b))


__all__ = [
    "NUM_PERM",
    "DuplicateIndex",
    "DuplicateOf",
    "exact_key",
    "find_duplicates",
    "jaccard",
    "normalise",
    "shingles",
    "similarity",
]
