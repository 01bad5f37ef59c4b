"""Deterministic train/valid/test assignment by source file.

Each (repo, path) hashes (SHA-256) to a number in [0, 1); the configured ratios cut
that interval into train, valid and test. All pairs of a file share its split, so no
file contributes to two splits, and a file keeps its split across re-exports as long as
the ratios do not change.

Tiny datasets: hashing can leave a split empty. mlx-lm refuses an empty ``valid.jsonl``
(and trains without validation when the file is absent), so when at least 3 files exist
and a split with a non-zero ratio is empty, the rebalancing rule moves into it the file
with the smallest hash from the largest split that still has 2 or more files. With 1 or
2 files some split stays empty; its per-split files are then not written (see the card).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

import duckdb
import pyarrow as pa

from cicdllm_assets.config.models import SplitConfig
from cicdllm_assets.export.records import SPLITS

FileKey = tuple[str, str]


def file_hash(repo: str, path: str) -> float:
    """A stable number in [0, 1) for a file."""
    digest = hashlib.sha256(f"{repo}\x1f{path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def bucket(value: float, ratios: Mapping[str, float]) -> str:
    """The split whose cumulative ratio interval contains ``value``."""
    cumulative = 0.0
    last = SPLITS[0]
    for name in SPLITS:
        ratio = ratios.get(name, 0.0)
        if ratio <= 0:
            continue
        cumulative += ratio
        last = name
        if value < cumulative:
            return name
    return last


def rebalance(
    ratios: Mapping[str, float],
    n_files: int,
    counts: Callable[[], Mapping[str, int]],
    smallest: Callable[[str], FileKey],
    move: Callable[[FileKey, str], None],
) -> None:
    """The tiny-dataset rule: with 3+ files, fill each empty split with a non-zero ratio from
    the largest split that has 2+ files (its smallest-hash file), through the callbacks."""
    if n_files < 3:
        return
    for target in SPLITS:
        current = counts()
        if ratios[target] <= 0 or current.get(target, 0) > 0:
            continue
        donors = [name for name in SPLITS if name != target and current.get(name, 0) >= 2]
        if not donors:
            continue
        donor = max(donors, key=lambda name: (current.get(name, 0), -SPLITS.index(name)))
        move(smallest(donor), target)


def split_ratios(split: SplitConfig) -> dict[str, float]:
    """The configured ratio of each split."""
    return {"train": split.train, "valid": split.valid, "test": split.test}


def assign_splits(files: Iterable[FileKey], split: SplitConfig) -> dict[FileKey, str]:
    """Split of every file (deterministic; file-disjoint by construction)."""
    ratios = split_ratios(split)
    unique = sorted(set(files))
    hashes = {f: file_hash(*f) for f in unique}
    assignment = {f: bucket(hashes[f], ratios) for f in unique}

    def move(f: FileKey, target: str) -> None:
        assignment[f] = target

    rebalance(
        ratios,
        len(unique),
        lambda: Counter(assignment.values()),
        lambda donor: min((f for f, s in assignment.items() if s == donor), key=lambda f: (hashes[f], f)),
        move,
    )
    return assignment


def assign_splits_table(
    con: duckdb.DuckDBPyConnection, files_sql: str, table: str, split: SplitConfig, batch_rows: int = 50_000
) -> int:
    """The same assignment for any number of files, kept in DuckDB as ``table(repo, path, h, split)``.

    ``files_sql`` selects distinct ``repo, path``; hashes are computed batch by batch, so
    memory does not grow with the number of files. Returns the number of files.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
        raise ValueError(f"not a plain SQL identifier: {table!r}")
    ratios = split_ratios(split)
    con.execute(f"CREATE OR REPLACE TABLE {table} (repo VARCHAR, path VARCHAR, h DOUBLE, split VARCHAR)")
    n_files = 0
    for batch in con.cursor().sql(files_sql).to_arrow_reader(batch_rows):
        repos, paths = batch.column(0).to_pylist(), batch.column(1).to_pylist()
        hashes = [file_hash(r, p) for r, p in zip(repos, paths, strict=True)]
        rows = pa.table({"repo": repos, "path": paths, "h": hashes, "split": [bucket(h, ratios) for h in hashes]})
        con.register("split_files_in", rows)
        con.execute(f"INSERT INTO {table} SELECT * FROM split_files_in")  # noqa: S608 - identifier checked
        con.unregister("split_files_in")
        n_files += batch.num_rows

    def counts() -> dict[str, int]:
        return dict(con.execute(f"SELECT split, count(*) FROM {table} GROUP BY split").fetchall())  # noqa: S608

    def smallest(donor: str) -> FileKey:
        rows = con.execute(
            f"SELECT repo, path FROM {table} WHERE split = ? ORDER BY h, repo, path LIMIT 1",  # noqa: S608
            [donor],
        ).fetchall()
        if not rows:  # cannot happen: a donor has 2+ files
            raise RuntimeError(f"split {donor!r} has no file to move")
        return str(rows[0][0]), str(rows[0][1])

    def move(f: FileKey, target: str) -> None:
        con.execute(f"UPDATE {table} SET split = ? WHERE repo = ? AND path = ?", [target, *f])  # noqa: S608

    rebalance(ratios, n_files, counts, smallest, move)
    return n_files
