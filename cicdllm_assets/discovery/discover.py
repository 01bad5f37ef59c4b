"""Find a commit's source files, apply the ``processing`` filters, and count their tokens.

Every tracked file becomes one row: ``kept``, or ``skipped`` with a specific reason, so a
user can always see why a file is missing from the chunks.
"""

from __future__ import annotations

import logging
import math
import posixpath
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cicdllm_assets.chunking.service import Chunker, PendingPlans, PlanRequest
from cicdllm_assets.config.models import ProcessingConfig
from cicdllm_assets.discovery.globs import first_match
from cicdllm_assets.discovery.verdicts import Verdict, VerdictCache
from cicdllm_assets.sources.content import (
    decode_text,
    decode_with,
    is_generated,
    is_lock_file,
    is_minified,
    looks_binary,
)
from cicdllm_assets.sources.git import MODE_SUBMODULE, BlobReader, TreeEntry, list_tree
from cicdllm_assets.sources.languages import detect_language, extension_of, known_filename

logger = logging.getLogger(__name__)

KEPT = "kept"
SKIPPED = "skipped"
MAX_SYMLINK_HOPS = 16
BATCH_FILES = 64
GROUP_CHARS = 12_000_000  # most characters per tokenizer call (few big calls cost the least CPU)


@dataclass
class SourceFile:
    """One tracked file and what discovery decided about it (``text`` is never stored)."""

    path: str
    blob_sha: str
    size_bytes: int
    mode: str
    language: str
    status: str = KEPT
    skip_reason: str | None = None
    skip_category: str | None = None
    encoding: str | None = None
    line_count: int = 0
    token_count: int = 0
    chunk_count: int = 0
    symlink_target: str | None = None
    text: str | None = field(default=None, repr=False)

    def skip(self, category: str, reason: str) -> SourceFile:
        """Mark skipped with a category (for counting) and a human-readable reason."""
        self.status, self.skip_category, self.skip_reason = SKIPPED, category, reason
        self.text = None
        return self


@dataclass
class DiscoveryStats:
    """Totals of one discovery run."""

    files_total: int = 0
    files_kept: int = 0
    files_skipped: int = 0
    skipped_by_category: Counter[str] = field(default_factory=Counter)
    bytes_read: int = 0
    bytes_kept: int = 0
    tokens: int = 0
    chunks: int = 0
    seconds: float = 0.0

    @property
    def files_per_second(self) -> float:
        """Throughput over all tracked files."""
        return self.files_total / self.seconds if self.seconds > 0 else 0.0


NO_FILES_KEPT_HINT = (
    "set include=GLOB on its repos.txt line, or change processing.include_globs / processing.extensions"
)


def no_files_kept_warning(files_total: int, skipped_by_category: Mapping[str, int] | None = None) -> str:
    """The warning for a repository whose filters kept none of its ``files_total`` files."""
    reasons = ", ".join(f"{n} {cat}" for cat, n in sorted((skipped_by_category or {}).items(), key=lambda kv: -kv[1]))
    detail = f" ({reasons})" if reasons else ""
    return f"0 of {files_total} files kept{detail}: nothing to generate from; {NO_FILES_KEPT_HINT}"


def preview_kept(repo_path: Path, commit: str, processing: ProcessingConfig) -> tuple[int, int, Counter[str]]:
    """(files the path and size filters keep, files tracked, skipped per category) at ``commit``,
    without reading any content (content checks may skip a few more)."""
    entries = list_tree(Path(repo_path), commit)
    max_bytes = processing.max_file_size_kb * 1024
    skipped: Counter[str] = Counter()
    for entry in entries:
        rejected = path_filter(entry.path, processing)
        if rejected is None and entry.size > max_bytes:
            rejected = ("too_large", "")
        if rejected is not None:
            skipped[rejected[0]] += 1
    return len(entries) - sum(skipped.values()), len(entries), skipped


def _kb(size: int) -> int:
    return math.ceil(size / 1024)


def path_filter(path: str, processing: ProcessingConfig) -> tuple[str, str] | None:
    """(category, reason) if the path alone excludes the file, else None."""
    if processing.include_globs and first_match(path, processing.include_globs) is None:
        return "not_included", "not matched by the include globs"
    pattern = first_match(path, processing.exclude_globs)
    if pattern is not None:
        return "excluded", f"excluded by glob '{pattern}'"
    if is_lock_file(path):
        return "lock_file", "lock file"
    ext = extension_of(path)
    if processing.extensions and ext not in processing.extensions and not (ext == "" and known_filename(path)):
        if ext:
            return "extension", f"extension '{ext}' not in processing.extensions"
        return "extension", "no extension (not in processing.extensions)"
    return None


def _resolve_symlink(
    entry: TreeEntry, by_path: dict[str, TreeEntry], directories: set[str], reader: BlobReader
) -> tuple[TreeEntry | None, str, str]:
    """Follow a git symlink inside the tree: (target entry or None, category, reason/target)."""
    current = entry
    for _ in range(MAX_SYMLINK_HOPS):
        raw = reader.read(current.sha).decode("utf-8", "replace")
        if raw.startswith("/") or "\0" in raw:
            return None, "symlink_outside", f"symlink outside repository (-> {raw})"
        target = posixpath.normpath(posixpath.join(posixpath.dirname(current.path), raw))
        if target == ".." or target.startswith("../"):
            return None, "symlink_outside", f"symlink outside repository (-> {raw})"
        found = by_path.get(target)
        if found is None:
            if target in directories or target == ".":
                return None, "symlink_directory", f"symlink to a directory (-> {target})"
            return None, "symlink_broken", f"broken symlink (-> {target})"
        if not found.is_symlink:
            return found, "", target
        current = found
    return None, "symlink_loop", "symlink loop"


def _directories(entries: list[TreeEntry]) -> set[str]:
    dirs: set[str] = set()
    for entry in entries:
        parent = posixpath.dirname(entry.path)
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = posixpath.dirname(parent)
    return dirs


def _check_content(item: SourceFile, data: bytes, processing: ProcessingConfig) -> SourceFile:
    """Binary, encoding, empty, generated and minified checks; sets ``text`` when kept."""
    if looks_binary(data):
        return item.skip("binary", "binary")
    decoded = decode_text(data)
    if decoded is None:
        return item.skip("undecodable", "undecodable (not UTF-8/16/32 and no reliable legacy encoding)")
    text = decoded.text
    if not text.strip():
        return item.skip("empty", "empty file")
    if processing.skip_generated:
        if is_generated(text):
            return item.skip("generated", "generated")
        if is_minified(text):
            return item.skip("minified", "minified")
    item.encoding = decoded.encoding
    item.text = text
    item.line_count = text.count("\n") + (0 if text.endswith("\n") else 1)
    return item


@dataclass
class _Pending:
    batch: list[SourceFile]
    kept: list[SourceFile]
    misses: list[SourceFile]


@dataclass
class _Group:
    batches: list[_Pending] = field(default_factory=list)
    misses: list[SourceFile] = field(default_factory=list)
    chars: int = 0
    plans: PendingPlans | None = None

    def add(self, pending: _Pending) -> None:
        self.batches.append(pending)
        self.misses.extend(pending.misses)
        self.chars += sum(len(item.text or "") for item in pending.misses)


class Discovery:
    """Discovery of one commit of one repository clone.

    Batches are pipelined: while batch k is tokenized in the background (the tokenizer
    releases the GIL), batch k+1 is read from git and checked. Content verdicts and chunk
    plans are cached per blob, so an unchanged file is neither read nor tokenized again.
    """

    def __init__(
        self,
        repo_path: Path,
        commit: str,
        processing: ProcessingConfig,
        chunker: Chunker | None = None,
        workers: int | None = None,
        verdicts: VerdictCache | None = None,
    ) -> None:
        self.repo_path = Path(repo_path)
        self.commit = commit
        self.processing = processing
        self.chunker = chunker
        self.verdicts = verdicts
        self.workers = workers or processing.max_concurrent_files
        self.stats = DiscoveryStats()
        self._entries: list[TreeEntry] | None = None

    def entries(self) -> list[TreeEntry]:
        """The commit's tree (every tracked file); listed once per Discovery."""
        if self._entries is None:
            self._entries = list_tree(self.repo_path, self.commit)
        return self._entries

    def run(self, on_progress: Callable[[int], None] | None = None) -> list[SourceFile]:
        """Every tracked file as a :class:`SourceFile` (texts dropped), sorted by path."""
        out: list[SourceFile] = []
        for batch in self.iter_batches(on_progress=on_progress):
            out.extend(batch)
        return out

    def iter_batches(
        self, on_progress: Callable[[int], None] | None = None, keep_text: bool = False
    ) -> Iterator[list[SourceFile]]:
        """Yield files in batches (``text`` set on kept files only with ``keep_text``).

        Uncached files are tokenized in groups of about ``GROUP_CHARS`` characters: one group
        is encoded in the background while the next one is read and checked.
        """
        started = time.perf_counter()
        entries = self.entries()
        by_path = {e.path: e for e in entries}
        directories = _directories(entries)
        self.stats.files_total = len(entries)
        target = self._group_target(entries)
        previous: _Group | None = None
        group = _Group()
        with BlobReader(self.repo_path) as reader, ThreadPoolExecutor(self.workers) as pool:
            for start in range(0, len(entries), BATCH_FILES):
                pending = self._prepare(
                    entries[start : start + BATCH_FILES], by_path, directories, reader, pool, keep_text
                )
                group.add(pending)
                if group.chars >= target:
                    self._submit(group)
                    if previous is not None:
                        yield from self._finish(previous, on_progress, keep_text, started)
                    previous, group = group, _Group()
            self._submit(group)
            if previous is not None:
                yield from self._finish(previous, on_progress, keep_text, started)
            yield from self._finish(group, on_progress, keep_text, started)
        self.stats.seconds = time.perf_counter() - started

    def _group_target(self, entries: list[TreeEntry]) -> int:
        """Characters per tokenizer call: equal groups of at most ``GROUP_CHARS``.

        Every extra ``encode_batch`` call costs CPU (likely each call's tail, where one of the
        tokenizer's threads idles or spins while the other finishes; splitting an 8 MB repo in
        two was measured at +5-8% encoder CPU, more than overlapping reading and planning with
        it saves), so a repo whose candidate files fit one group is tokenized in one call, and
        larger repos in equal parts. Blob sizes of the files the path filters keep are the
        estimate.
        """
        max_bytes = self.processing.max_file_size_kb * 1024
        estimate = sum(
            e.size
            for e in entries
            if e.size <= max_bytes and not e.is_symlink and path_filter(e.path, self.processing) is None
        )
        groups = max(1, -(-estimate // GROUP_CHARS))
        return max(1, estimate // groups)

    def _submit(self, group: _Group) -> None:
        """Start encoding a group's uncached files in the background (in path order: sorting by
        size was measured to unbalance the tokenizer's threads)."""
        if self.chunker is None or not group.misses:
            return
        group.plans = self.chunker.submit([PlanRequest(i.blob_sha, i.language, i.text or "") for i in group.misses])

    def _prepare(
        self,
        entries: list[TreeEntry],
        by_path: dict[str, TreeEntry],
        directories: set[str],
        reader: BlobReader,
        pool: ThreadPoolExecutor,
        keep_text: bool,
    ) -> _Pending:
        """Filter one batch, classify its content and start tokenizing what is not cached."""
        max_bytes = self.processing.max_file_size_kb * 1024
        batch: list[SourceFile] = []
        candidates: list[tuple[SourceFile, TreeEntry]] = []
        for entry in entries:
            item = SourceFile(entry.path, entry.sha, entry.size, entry.mode, detect_language(entry.path))
            batch.append(item)
            if entry.mode == MODE_SUBMODULE or entry.kind != "blob":
                item.skip("submodule", "git submodule (not followed)")
                continue
            rejected = path_filter(entry.path, self.processing)
            if rejected is not None:
                item.skip(*rejected)
                continue
            target = entry
            if entry.is_symlink:
                resolved, category, detail = _resolve_symlink(entry, by_path, directories, reader)
                if resolved is None:
                    item.skip(category, detail)
                    continue
                target = resolved
                item.blob_sha, item.size_bytes, item.symlink_target = resolved.sha, resolved.size, detail
            if target.size > max_bytes:
                limit_kb = self.processing.max_file_size_kb
                item.skip("too_large", f"too large: {_kb(target.size)} KB > {limit_kb} KB")
                continue
            candidates.append((item, target))

        known = self.verdicts.get_many([t.sha for _, t in candidates]) if self.verdicts else {}
        to_read = [(item, target) for item, target in candidates if target.sha not in known]
        for item, target in candidates:
            verdict = known.get(target.sha)
            if verdict is not None:
                if verdict.kept:
                    item.encoding, item.line_count = verdict.encoding, verdict.line_count
                else:
                    item.skip(verdict.category or "other", verdict.reason or "skipped")
        blobs = reader.read_many([target.sha for _, target in to_read])
        self.stats.bytes_read += sum(len(b) for b in blobs)
        list(
            pool.map(
                lambda pair: _check_content(pair[0][0], pair[1], self.processing), zip(to_read, blobs, strict=True)
            )
        )
        if self.verdicts is not None and to_read:
            self.verdicts.put_many(
                (
                    item.blob_sha,
                    Verdict(item.status == KEPT, item.skip_category, item.skip_reason, item.encoding, item.line_count),
                )
                for item, _ in to_read
            )
        kept = [item for item, _ in candidates if item.status == KEPT]
        if self.chunker is None:
            self._load_texts([item for item in kept if item.text is None] if keep_text else [], reader)
            return _Pending(batch, kept, [])
        summaries = self.chunker.summaries([(i.blob_sha, i.language) for i in kept])
        misses: list[SourceFile] = []
        for item in kept:
            summary = summaries.get(self.chunker.key(item.blob_sha, item.language))
            if summary is None:
                misses.append(item)
            else:
                item.token_count, item.chunk_count = summary.token_count, summary.chunk_count
        self._load_texts([i for i in (kept if keep_text else misses) if i.text is None], reader)
        return _Pending(batch, kept, misses)

    def _load_texts(self, items: list[SourceFile], reader: BlobReader) -> None:
        """Read and decode kept files whose verdict came from the cache."""
        for item, data in zip(items, reader.read_many([i.blob_sha for i in items]), strict=True):
            self.stats.bytes_read += len(data)
            item.text = decode_with(data, item.encoding or "utf-8")

    def _finish(
        self, group: _Group, on_progress: Callable[[int], None] | None, keep_text: bool, started: float
    ) -> Iterator[list[SourceFile]]:
        if group.plans is not None:
            for item, plan in zip(group.misses, group.plans.result(), strict=True):
                item.token_count, item.chunk_count = plan.token_count, len(plan.chunks)
        stats = self.stats
        for pending in group.batches:
            for item in pending.batch:
                if item.status == KEPT:
                    stats.files_kept += 1
                    stats.bytes_kept += item.size_bytes
                    stats.tokens += item.token_count
                    stats.chunks += item.chunk_count
                    if not keep_text:
                        item.text = None
                else:
                    stats.files_skipped += 1
                    stats.skipped_by_category[item.skip_category or "other"] += 1
            if on_progress is not None:
                on_progress(len(pending.batch))
            stats.seconds = time.perf_counter() - started
            yield pending.batch
