"""The code chunk as the generation stage sees it (one row of ``code_chunks``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

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
