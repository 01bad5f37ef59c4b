"""Turn cached chunk plans into ``code_chunks`` rows: slice, redact secrets, re-check the budget."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from cicdllm_assets.chunking.plan import ChunkSpan, FilePlan
from cicdllm_assets.chunking.redaction_cache import RedactionCache, text_key
from cicdllm_assets.llm.tokenizer_counter import TokenCounter
from cicdllm_assets.quality.secrets import redact_field, redact_secrets
from cicdllm_assets.storage.contract import CODE_CHUNKS_SCHEMA

Redactor = Callable[[str, str], Any]


_TRAILING_SPACE_RE = re.compile(r"[ \t]+$", re.MULTILINE)
_WORD_RE = re.compile(r"[A-Za-z_$][\w$]*")
_IMPORT_KEYWORDS = frozenset(
    {
        "import",
        "from",
        "as",
        "require",
        "require_relative",
        "const",
        "let",
        "var",
        "use",
        "using",
        "include",
        "package",
        "extern",
        "crate",
        "library",
        "static",
        "type",
        "typeof",
        "default",
        "export",
        "pub",
        "mod",
        "self",
        "super",
    }
)


def normalize_code(text: str) -> str:
    """The code as a prompt shows it: LF line ends, no trailing blanks on a line or at the end."""
    return _TRAILING_SPACE_RE.sub("", text.replace("\r\n", "\n")).rstrip("\n")


def chunk_key(repo: str, path: str, language: str, symbol: str, imports: str, text: str) -> str:
    """Identity of a chunk: a hash of everything a prompt can show of it except its position.

    The normalised code, language, symbol, imports, path and repo: a chunk whose lines move
    (lines inserted above it, the function moved within its file) keeps its key, and with
    it its generations; its provenance (lines, commit) is read from the current row.
    """
    raw = json.dumps([repo, path, language, symbol, imports, normalize_code(text)], ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def span_key(blob_sha: str, start_line: int, end_line: int, extra: str = "") -> str:
    """A hash of (blob sha, line span[, sub-line span]): the same span of the same blob."""
    raw = f"{blob_sha}:{start_line}:{end_line}" + (f":{extra}" if extra else "")
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def imports_used(imports: str, text: str) -> str:
    """The import lines of ``imports`` that bind a name ``text`` uses (the chunk's own imports).

    A chunk's prompt shows only these, so adding an import for one function leaves the other
    chunks of the file (and their generations) unchanged.
    """
    if not imports:
        return ""
    words = set(_WORD_RE.findall(text)) - _IMPORT_KEYWORDS
    return "\n".join(line for line in imports.split("\n") if words.intersection(_WORD_RE.findall(line)))


@dataclass(frozen=True)
class FileForChunks:
    """A kept file with its decoded text."""

    path: str
    blob_sha: str
    language: str
    text: str


@dataclass
class ChunkRowStats:
    """Counters of one row-building run."""

    chunks: int = 0
    tokens: int = 0
    redactions: int = 0
    redacted_chunks: int = 0
    resplit_chunks: int = 0
    duplicate_chunks: int = 0
    max_tokens: int = 0
    by_language: dict[str, int] = field(default_factory=dict)


def fit_text(text: str, budget: int, counter: TokenCounter) -> list[tuple[int, str, int]]:
    """Split ``text`` into (line offset, piece, tokens) pieces of at most ``budget`` real tokens.

    Used only when redaction grew a chunk past the budget: halves by lines, then by characters.
    """
    n = counter.count(text)
    if n <= budget:
        return [(0, text, n)]
    lines = text.splitlines(keepends=True)
    if len(lines) > 1:
        mid = len(lines) // 2
        head, tail = "".join(lines[:mid]), "".join(lines[mid:])
        return fit_text(head, budget, counter) + [
            (off + mid, piece, tok) for off, piece, tok in fit_text(tail, budget, counter)
        ]
    if len(text) <= 1:
        return [(0, text, n)]
    mid = len(text) // 2
    return fit_text(text[:mid], budget, counter) + fit_text(text[mid:], budget, counter)


class ChunkRowBuilder:
    """Accumulates ``code_chunks`` rows for one repo partition (one chunk key at most once)."""

    def __init__(
        self,
        repo: str,
        commit: str,
        license_id: str | None,
        budget: int,
        counter: TokenCounter,
        redactor: Redactor | None = redact_secrets,
        redaction_cache: RedactionCache | None = None,
    ) -> None:
        self.repo, self.commit, self.license = repo, commit, license_id
        self.budget = budget
        self.counter = counter
        self.redactor = redactor
        self.redaction_cache = redaction_cache
        self._pending_redactions: list[tuple[str, str | None, int]] = []
        self._prefetched: dict[str, tuple[str | None, int]] = {}
        self._prefetched_missing: set[str] = set()
        self.columns: dict[str, list[Any]] = {name: [] for name in CODE_CHUNKS_SCHEMA.names}
        self.stats = ChunkRowStats()
        self._seen: set[str] = set()
        self._seen_spans: set[str] = set()

    def _append(
        self,
        file: FileForChunks,
        span: ChunkSpan,
        start: int,
        end: int,
        file_imports: str,
        text: str,
        tokens: int,
        redactions: int,
    ) -> None:
        imports = imports_used(file_imports, text)
        symbol = redact_field(span.symbol) if self.redactor is not None else span.symbol
        key = chunk_key(self.repo, file.path, file.language, symbol or "", imports, text)
        if key in self._seen:
            self.stats.duplicate_chunks += 1
            return
        self._seen.add(key)
        cols = self.columns
        index = len(cols["chunk_key"])
        for name, value in (
            ("repo", self.repo),
            ("commit", self.commit),
            ("license", self.license),
            ("path", file.path),
            ("blob_sha", file.blob_sha),
            ("language", file.language),
            ("chunk_key", key),
            ("start_line", start),
            ("end_line", end),
            ("symbol", symbol),
            ("imports", imports),
            ("text", text),
            ("token_count", tokens),
            ("redactions", redactions),
            ("chunk_index", index),
        ):
            cols[name].append(value)
        stats = self.stats
        stats.chunks += 1
        stats.tokens += tokens
        stats.max_tokens = max(stats.max_tokens, tokens)
        stats.by_language[file.language] = stats.by_language.get(file.language, 0) + 1

    def _redact(self, path: str, texts: list[str]) -> list[tuple[str, int]]:
        """(text after redaction, secrets replaced) per text, through the cache when there is one."""
        if self.redactor is None:
            return [(text, 0) for text in texts]
        cache = self.redaction_cache
        if cache is None:
            results = [self.redactor(text, path) for text in texts]
            return [(r.text, int(r.total)) for r in results]
        keys = [text_key(path, text) for text in texts]
        cached: dict[str, tuple[str | None, int]] = {}
        to_query: list[str] = []
        for key in keys:
            if key in self._prefetched:
                cached[key] = self._prefetched[key]
                cache.hits += 1
            elif key in self._prefetched_missing:
                cache.misses += 1
            else:
                to_query.append(key)
        if to_query:
            cached.update(cache.get_many(to_query))
        out: list[tuple[str, int]] = []
        for key, text in zip(keys, texts, strict=True):
            hit = cached.get(key)
            if hit is not None:
                out.append((hit[0] if hit[0] is not None else text, hit[1]))
                continue
            result = self.redactor(text, path)
            total = int(result.total)
            out.append((result.text, total))
            self._pending_redactions.append((key, result.text if result.text != text else None, total))
        if len(self._pending_redactions) >= 512:
            self.flush()
        return out

    def prefetch(self, files: Sequence[FileForChunks], plans: Sequence[FilePlan]) -> None:
        """Look up the redaction cache for many files at once (one query instead of one per file)."""
        if self.redactor is None or self.redaction_cache is None:
            return
        keys = [
            text_key(file.path, file.text[span.start_char : span.end_char])
            for file, plan in zip(files, plans, strict=True)
            for span in plan.chunks
        ]
        cache = self.redaction_cache
        hits, misses = cache.hits, cache.misses
        found = cache.get_many(keys)
        cache.hits, cache.misses = hits, misses  # counted when used
        self._prefetched = found
        self._prefetched_missing = {key for key in keys if key not in found}

    def flush(self) -> None:
        """Write pending redaction results to the cache."""
        if self.redaction_cache is not None and self._pending_redactions:
            self.redaction_cache.put_many(self._pending_redactions)
        self._pending_redactions = []

    def add_file(self, file: FileForChunks, plan: FilePlan) -> int:
        """Add the rows of one file; returns how many chunks it produced."""
        before = self.stats.chunks
        spans: list[tuple[ChunkSpan, str, str]] = []
        for span in plan.chunks:
            extra = f"{span.start_char}-{span.end_char}" if span.partial else ""
            key = span_key(file.blob_sha, span.start_line, span.end_line, extra)
            if key in self._seen_spans:  # the same blob under another path (symlink, copy)
                self.stats.duplicate_chunks += 1
                continue
            self._seen_spans.add(key)
            spans.append((span, extra, key))
        originals = [file.text[span.start_char : span.end_char] for span, _, _ in spans]
        redacted = self._redact(file.path, originals)
        # Imports, symbols and the path reach prompts and the table as well: redacted too.
        imports, path = plan.imports, file.path
        if self.redactor is not None:
            imports, path = redact_field(imports, file.path) or "", redact_field(path) or path
        file = FileForChunks(path, file.blob_sha, file.language, file.text) if path != file.path else file
        for (span, _, _), original, (text, redactions) in zip(spans, originals, redacted, strict=True):
            tokens = span.token_count
            self.stats.redactions += redactions
            if text != original:
                self.stats.redacted_chunks += 1
                tokens = self.counter.count(text)  # placeholders change the token count
            if tokens > self.budget:
                self.stats.resplit_chunks += 1
                for k, (offset, piece, piece_tokens) in enumerate(fit_text(text, self.budget, self.counter)):
                    start = min(span.start_line + offset, span.end_line)
                    end = min(start + max(piece.count("\n") - (1 if piece.endswith("\n") else 0), 0), span.end_line)
                    self._append(file, span, start, end, imports, piece, piece_tokens, redactions if k == 0 else 0)
                continue
            self._append(file, span, span.start_line, span.end_line, imports, text, tokens, redactions)
        return self.stats.chunks - before

    def table(self) -> pa.Table:
        """The accumulated rows as a table with the ``code_chunks`` schema (flushes the cache)."""
        self.flush()
        return pa.Table.from_pydict(self.columns, schema=CODE_CHUNKS_SCHEMA)


def texts_digest(texts: Sequence[str]) -> str:
    """A short hash over many texts (data versions)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
    return digest.hexdigest()[:24]
