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
from collections.abc import Iterable, Mapping

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


def assign_splits(files: Iterable[FileKey], split: SplitConfig) -> dict[FileKey, str]:
    """Split of every file (deterministic; file-disjoint by construction)."""
    ratios = {"train": split.train, "valid": split.valid, "test": split.test}
    unique = sorted(set(files))
    hashes = {f: file_hash(*f) for f in unique}
    assignment = {f: bucket(hashes[f], ratios) for f in unique}
    if len(unique) < 3:
        return assignment
    for target in SPLITS:
        if ratios[target] <= 0 or any(s == target for s in assignment.values()):
            continue
        members: dict[str, list[FileKey]] = {name: [] for name in SPLITS}
        for f, s in assignment.items():
            members[s].append(f)
        donors = [name for name in SPLITS if name != target and len(members[name]) >= 2]
        if not donors:
            continue
        donor = max(donors, key=lambda name: (len(members[name]), -SPLITS.index(name)))
        moved = min(members[donor], key=lambda f: (hashes[f], f))
        assignment[moved] = target
    return assignment
