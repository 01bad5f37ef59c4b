"""The code_chunks work for one repo: read kept blobs from git, plan (cached), slice, redact."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cicdllm_assets.chunking.rows import ChunkRowBuilder, FileForChunks
from cicdllm_assets.chunking.service import Chunker, PlanRequest
from cicdllm_assets.sources.content import decode_with
from cicdllm_assets.sources.git import BlobReader, GitError

BATCH_FILES = 256


@dataclass
class BuildFailure:
    """A kept file that could not be read back (e.g. the clone was garbage-collected)."""

    path: str
    message: str


@dataclass
class BuildResult:
    """Files read and failures of one build."""

    files: int = 0
    failures: list[BuildFailure] = field(default_factory=list)


def kept_in_chunk_order(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Kept ``source_files`` rows, real files before symlinks (a symlink shares its target's blob)."""
    return sorted(
        (r for r in rows if r["status"] == "kept"),
        key=lambda r: (r.get("symlink_target") is not None, r["path"]),
    )


def build_chunks(
    repo_path: Path,
    kept: Sequence[Mapping[str, Any]],
    chunker: Chunker,
    builder: ChunkRowBuilder,
    on_progress: Callable[[int, int], None] | None = None,
) -> BuildResult:
    """Add every kept file's chunks to ``builder``; ``on_progress(done, failed)`` per batch."""
    result = BuildResult()
    batches = [kept[start : start + BATCH_FILES] for start in range(0, len(kept), BATCH_FILES)]
    with BlobReader(Path(repo_path)) as reader, ThreadPoolExecutor(1, thread_name_prefix="cicdllm-read") as pool:

        def read(batch: Sequence[Mapping[str, Any]]) -> list[bytes]:
            return reader.read_many([item["blob_sha"] for item in batch])

        # The next batch is read (git inflates, our thread waits on the pipe) while this one
        # is decoded, planned and turned into rows.
        ahead: Future[list[bytes]] | None = pool.submit(read, batches[0]) if batches else None
        for index, batch in enumerate(batches):
            files: list[FileForChunks] = []
            current = ahead
            ahead = pool.submit(read, batches[index + 1]) if index + 1 < len(batches) else None
            try:
                blobs: list[bytes | None] = list(current.result() if current is not None else read(batch))
            except GitError:  # a missing object: fall back to one by one to name the file(s)
                blobs = []  # (the reader restarts its git process; the batch read ahead is unaffected)
                for item in batch:
                    try:
                        blobs.append(reader.read(item["blob_sha"]))
                    except GitError as exc:
                        result.failures.append(BuildFailure(item["path"], f"{type(exc).__name__}: {exc}"))
                        blobs.append(None)
            for item, data in zip(batch, blobs, strict=True):
                if data is None:
                    continue
                try:
                    text = decode_with(data, item.get("encoding") or "utf-8")
                except (UnicodeDecodeError, LookupError) as exc:
                    result.failures.append(BuildFailure(item["path"], f"{type(exc).__name__}: {exc}"))
                    continue
                files.append(FileForChunks(item["path"], item["blob_sha"], item["language"], text))
            plans = chunker.plan_many([PlanRequest(f.blob_sha, f.language, f.text) for f in files])
            builder.prefetch(files, plans)
            for file, plan in zip(files, plans, strict=True):
                builder.add_file(file, plan)
            result.files += len(files)
            if on_progress is not None:
                on_progress(len(files), len(batch) - len(files))
    return result
