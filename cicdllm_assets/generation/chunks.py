"""The code chunk as the generation stage sees it (one row of ``code_chunks``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow as pa

from cicdllm_assets.chunking.rows import normalize_code
from cicdllm_assets.storage.contract import CodeChunkRow


@dataclass(frozen=True)
class Chunk:
    """One redacted code chunk with the provenance every generated row carries."""

    repo: str
    chunk_key: str
    path: str
    start_line: int
    end_line: int
    text: str
    language: str = ""
    symbol: str = ""
    imports: str = ""
    commit: str = ""
    license: str = ""

    @classmethod
    def from_row(cls, row: CodeChunkRow) -> Chunk:
        """Build from a ``code_chunks`` row; null (or, in an older table, missing) optional columns
        become empty."""
        missing = [name for name in ("repo", "chunk_key", "path", "start_line", "end_line", "text") if name not in row]
        if missing:
            raise ValueError(f"code_chunks row lacks required columns {missing}")
        return cls(
            repo=row["repo"],
            chunk_key=row["chunk_key"],
            path=row["path"],
            start_line=row["start_line"],
            end_line=row["end_line"],
            text=row["text"],
            language=row.get("language") or "",
            symbol=row.get("symbol") or "",
            imports=row.get("imports") or "",
            commit=row.get("commit") or "",
            license=row.get("license") or "",
        )

    def placeholder_values(self, code: str | None = None) -> dict[str, str]:
        """Values for the chunk placeholders of a prompt template (``code`` may be trimmed)."""
        return {
            "repo": self.repo,
            "path": self.path,
            "language": self.language or "text",
            "symbol": self.symbol or f"the top-level code of {PurePosixPath(self.path).name}",
            "imports": self.imports or "(none)",
            "start_line": str(self.start_line),
            "end_line": str(self.end_line),
            "code": normalize_code(self.text if code is None else code),
        }


def select_chunks(rows: Sequence[CodeChunkRow], limit: int | None) -> list[Chunk]:
    """Chunks in deterministic (path, start_line, end_line, chunk_key) order, first ``limit``.

    Duplicate chunk keys (the same span twice) are kept once.
    """
    chunks = sorted(
        (Chunk.from_row(row) for row in rows),
        key=lambda c: (c.path, c.start_line, c.end_line, c.chunk_key),
    )
    unique: list[Chunk] = []
    seen: set[str] = set()
    for chunk in chunks:
        if chunk.chunk_key in seen:
            continue
        seen.add(chunk.chunk_key)
        unique.append(chunk)
    return unique if limit is None else unique[:limit]


# A bounded selection (``max_chunks_per_repo``) prefers chunks worth asking about:
# one named function/class of a useful size; then any named symbol; then the rest.
_MIN_GOOD_TOKENS = 48
_MAX_GOOD_TOKENS = 300


def _selection_tier(chunk: Chunk, token_count: int | None) -> int:
    """0 best: a single named symbol of a useful size; 1: any named symbol; 2: unnamed (module level)."""
    if not chunk.symbol:
        return 2
    single = "," not in chunk.symbol
    sized = token_count is None or _MIN_GOOD_TOKENS <= token_count <= _MAX_GOOD_TOKENS
    return 0 if single and sized else 1


def chunks_from_table(table: pa.Table, repo: str, limit: int | None) -> list[Chunk]:
    """This partition's chunks in (path, line) order; with ``limit``, a deterministic spread.

    Without a limit every chunk is returned. With ``limit`` (``max_chunks_per_repo``) the
    chunks are ranked by :func:`_selection_tier`, then by a hash of their content-derived
    ``chunk_key`` (a stable pseudo-random spread over the files: adding or editing one file
    never reshuffles the others), and the first ``limit`` are returned in (path, line) order.
    """
    rows = [row for row in table.to_pylist() if str(row.get("repo", repo)) == repo]
    for row in rows:
        row.setdefault("repo", repo)
    chunks = select_chunks(rows, None)
    if limit is None or len(chunks) <= limit:
        return chunks
    tokens: dict[str, int | None] = {}
    for row in rows:
        value = row.get("token_count")
        tokens[str(row["chunk_key"])] = int(value) if isinstance(value, int | float) else None
    ranked = sorted(
        chunks,
        key=lambda c: (
            _selection_tier(c, tokens.get(c.chunk_key)),
            hashlib.sha256(c.chunk_key.encode()).hexdigest(),
        ),
    )
    chosen = {c.chunk_key for c in ranked[:limit]}
    return [c for c in chunks if c.chunk_key in chosen]
