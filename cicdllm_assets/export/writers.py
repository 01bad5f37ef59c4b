"""Streaming, atomic writers for every export format.

All writers consume record batches of :data:`~cicdllm_assets.export.records.EXPORT_SCHEMA`
one at a time (memory is bounded by the batch size, not the dataset size) and write to
a temp file beside the target, renamed into place only when the whole export succeeded.

Layout under the export dir::

    dataset.jsonl  dataset.csv  dataset.parquet       full records (+ split column)
    mlx_chat/{train,valid,test}.jsonl                 {"messages": [system, user, assistant]}
    mlx_completions/{train,valid,test}.jsonl          {"prompt", "completion"}
    alpaca/{train,valid,test}.jsonl                   {"instruction", "input", "output"}
    sharegpt/{train,valid,test}.jsonl                 {"conversations": [human, gpt], "system"}
    openai/{train,valid,test}.jsonl                   {"messages": [...]} (chat fine-tuning)

A per-split file is only written when its split has rows (mlx-lm fails on an empty
``valid.jsonl`` but accepts a missing one).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cicdllm_assets.export.records import SPLITS, context_block
from cicdllm_assets.storage.contract import EXPORT_SCHEMA

RECORD_FILES: dict[str, str] = {"jsonl": "dataset.jsonl", "csv": "dataset.csv", "parquet": "dataset.parquet"}
SPLIT_FORMATS: tuple[str, ...] = ("mlx_chat", "mlx_completions", "alpaca", "sharegpt", "openai")
PARQUET_ROW_GROUP_ROWS = 16_384
PARQUET_COMPRESSION = "zstd"


@dataclass(frozen=True)
class WrittenFile:
    """One file an export wrote."""

    format: str
    split: str | None
    path: Path
    rows: int
    bytes: int


def _umask() -> int:
    """The process umask (read by setting and restoring it; Linux also shows it in /proc)."""
    status = Path("/proc/self/status")
    with contextlib.suppress(OSError, ValueError):
        for line in status.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_path(target: Path) -> Path:
    """A fresh temp file beside ``target`` with the mode a plain ``open()`` would give (0666 & ~umask).

    ``mkstemp`` creates 0600 files; renamed into place they would stay unreadable to others.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(name)


class _Staged:
    """A temp file that becomes ``target`` on :meth:`commit` (or disappears on :meth:`abort`)."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.temp = _temp_path(target)
        self.rows = 0

    def commit(self) -> None:
        os.replace(self.temp, self.target)

    def abort(self) -> None:
        self.temp.unlink(missing_ok=True)


class FormatWriter:
    """Base class: receives batches, then commits (atomic rename) or aborts."""

    format: str = ""

    def write(self, batch: pa.RecordBatch) -> None:
        """Consume one batch of export records."""
        raise NotImplementedError

    def finish(self) -> list[WrittenFile]:
        """Flush and close; return the staged files (not yet renamed)."""
        raise NotImplementedError

    def staged(self) -> list[_Staged]:
        """Files to rename into place once every writer finished."""
        raise NotImplementedError

    def close_quietly(self) -> None:
        """Close open handles after a failure (errors ignored)."""
        for name in ("handle", "writer"):
            closer = getattr(getattr(self, name, None), "close", None)
            if closer is not None:
                with contextlib.suppress(Exception):  # best effort while aborting
                    closer()
        for handle in getattr(self, "handles", {}).values():
            handle.close()

    def abort(self) -> None:
        """Close and delete every temp file."""
        self.close_quietly()
        for staged in self.staged():
            staged.abort()


def _columns(batch: pa.RecordBatch, names: Iterable[str]) -> dict[str, list[Any]]:
    return {name: batch.column(name).to_pylist() for name in names}


# ------------------------------------------------------------------------ full-record formats


class _RecordFileWriter(FormatWriter):
    """A format written as one file of full records (``self.file``)."""

    file: _Staged

    def _written(self) -> list[WrittenFile]:
        return [WrittenFile(self.format, None, self.file.target, self.file.rows, self.file.temp.stat().st_size)]

    def staged(self) -> list[_Staged]:
        """The one staged file."""
        return [self.file]


class JsonlRecordsWriter(_RecordFileWriter):
    """``dataset.jsonl``: every column of every record, one JSON object per line."""

    format = "jsonl"

    def __init__(self, out_dir: Path) -> None:
        self.file = _Staged(out_dir / RECORD_FILES["jsonl"])
        self.handle: IO[str] = open(self.file.temp, "w", encoding="utf-8", newline="\n")  # noqa: SIM115

    def write(self, batch: pa.RecordBatch) -> None:
        """Write one batch."""
        lines = [json.dumps(row, ensure_ascii=False) for row in batch.to_pylist()]
        if lines:
            self.handle.write("\n".join(lines) + "\n")
            self.file.rows += len(lines)

    def finish(self) -> list[WrittenFile]:
        """Close the temp file."""
        self.handle.close()
        return self._written()


class CsvRecordsWriter(_RecordFileWriter):
    """``dataset.csv``: RFC 4180 quoting, so commas, quotes and newlines round-trip."""

    format = "csv"

    def __init__(self, out_dir: Path) -> None:
        self.file = _Staged(out_dir / RECORD_FILES["csv"])
        self.writer = pacsv.CSVWriter(str(self.file.temp), EXPORT_SCHEMA)

    def write(self, batch: pa.RecordBatch) -> None:
        """Write one batch."""
        if batch.num_rows:
            self.writer.write_batch(batch)
            self.file.rows += batch.num_rows

    def finish(self) -> list[WrittenFile]:
        """Close the temp file."""
        self.writer.close()
        return self._written()


class ParquetRecordsWriter(_RecordFileWriter):
    """``dataset.parquet`` (zstd, row groups of ~64k rows; polars/pyarrow/datasets read it)."""

    format = "parquet"

    def __init__(self, out_dir: Path, row_group_rows: int = PARQUET_ROW_GROUP_ROWS) -> None:
        self.file = _Staged(out_dir / RECORD_FILES["parquet"])
        self.writer = pq.ParquetWriter(str(self.file.temp), EXPORT_SCHEMA, compression=PARQUET_COMPRESSION)
        self.row_group_rows = row_group_rows
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(
                pa.Table.from_batches(self.pending, EXPORT_SCHEMA), row_group_size=self.row_group_rows
            )
            self.pending, self.pending_rows = [], 0

    def write(self, batch: pa.RecordBatch) -> None:
        """Buffer up to one row group, then write it."""
        if not batch.num_rows:
            return
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        self.file.rows += batch.num_rows
        if self.pending_rows >= self.row_group_rows:
            self._flush()

    def finish(self) -> list[WrittenFile]:
        """Write the last row group and the footer."""
        self._flush()
        self.writer.close()
        return self._written()


# ------------------------------------------------------------------------ per-split formats

Render = Callable[[dict[str, list[Any]], int], dict[str, Any]]


def _messages(cols: dict[str, list[Any]], i: int) -> list[dict[str, str]]:
    messages = []
    if cols["system"][i]:
        messages.append({"role": "system", "content": cols["system"][i]})
    messages.append({"role": "user", "content": cols["prompt"][i]})
    messages.append({"role": "assistant", "content": cols["answer"][i]})
    return messages


def _render_chat(cols: dict[str, list[Any]], i: int) -> dict[str, Any]:
    return {"messages": _messages(cols, i)}


def _render_completions(cols: dict[str, list[Any]], i: int) -> dict[str, Any]:
    return {"prompt": cols["prompt"][i], "completion": cols["answer"][i]}


def _render_alpaca(cols: dict[str, list[Any]], i: int) -> dict[str, Any]:
    context = cols["context"][i]
    block = (
        context_block(cols["path"][i], cols["start_line"][i], cols["end_line"][i], cols["language"][i], context)
        if context.strip()
        else ""
    )
    return {"instruction": cols["question"][i], "input": block, "output": cols["answer"][i]}


def _render_sharegpt(cols: dict[str, list[Any]], i: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "conversations": [
            {"from": "human", "value": cols["prompt"][i]},
            {"from": "gpt", "value": cols["answer"][i]},
        ]
    }
    if cols["system"][i]:
        record["system"] = cols["system"][i]
    return record


_RENDERERS: dict[str, tuple[Render, tuple[str, ...]]] = {
    "mlx_chat": (_render_chat, ("system", "prompt", "answer")),
    "openai": (_render_chat, ("system", "prompt", "answer")),
    "mlx_completions": (_render_completions, ("prompt", "answer")),
    "alpaca": (_render_alpaca, ("question", "context", "path", "start_line", "end_line", "language", "answer")),
    "sharegpt": (_render_sharegpt, ("system", "prompt", "answer")),
}


class SplitJsonlWriter(FormatWriter):
    """``<format>/<split>.jsonl`` for a chat/completion format; files opened on first row."""

    def __init__(self, out_dir: Path, fmt: str) -> None:
        if fmt not in _RENDERERS:
            raise ValueError(f"not a per-split format: {fmt}")
        self.format = fmt
        self.dir = out_dir / fmt
        self.render, self.needed = _RENDERERS[fmt]
        self.files: dict[str, _Staged] = {}
        self.handles: dict[str, IO[str]] = {}

    def _handle(self, split: str) -> IO[str]:
        handle = self.handles.get(split)
        if handle is None:
            self.files[split] = _Staged(self.dir / f"{split}.jsonl")
            handle = open(self.files[split].temp, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
            self.handles[split] = handle
        return handle

    def write(self, batch: pa.RecordBatch) -> None:
        """Render every row of the batch into its split's file."""
        if not batch.num_rows:
            return
        cols = _columns(batch, (*self.needed, "split"))
        by_split: dict[str, list[str]] = {}
        render = self.render
        for i, split in enumerate(cols["split"]):
            by_split.setdefault(split, []).append(json.dumps(render(cols, i), ensure_ascii=False))
        for split, lines in by_split.items():
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r} in export records")
            self._handle(split).write("\n".join(lines) + "\n")
            self.files[split].rows += len(lines)

    def finish(self) -> list[WrittenFile]:
        """Close every split file."""
        written = []
        for split in SPLITS:
            if split in self.handles:
                self.handles[split].close()
                staged = self.files[split]
                written.append(WrittenFile(self.format, split, staged.target, staged.rows, staged.temp.stat().st_size))
        return written

    def staged(self) -> list[_Staged]:
        """Staged split files."""
        return list(self.files.values())


def make_writer(fmt: str, out_dir: Path) -> FormatWriter:
    """The writer for one export format name."""
    if fmt == "jsonl":
        return JsonlRecordsWriter(out_dir)
    if fmt == "csv":
        return CsvRecordsWriter(out_dir)
    if fmt == "parquet":
        return ParquetRecordsWriter(out_dir)
    if fmt in SPLIT_FORMATS:
        return SplitJsonlWriter(out_dir, fmt)
    raise ValueError(f"unknown export format {fmt!r}; known: {', '.join([*RECORD_FILES, *SPLIT_FORMATS])}")


def managed_paths(out_dir: Path) -> list[Path]:
    """Every file path an export may write (used to remove stale files of earlier exports)."""
    paths = [out_dir / name for name in RECORD_FILES.values()]
    paths += [out_dir / fmt / f"{split}.jsonl" for fmt in SPLIT_FORMATS for split in SPLITS]
    return paths


def write_exports(batches: Iterable[pa.RecordBatch], formats: Iterable[str], out_dir: Path) -> list[WrittenFile]:
    """Stream ``batches`` once into every format; rename all files into place only on success.

    Files of earlier exports that this export did not produce (an emptied split, a
    format no longer configured) are removed, so the directory always shows one export.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writers: list[FormatWriter] = []
    written: list[WrittenFile] = []
    try:
        for fmt in dict.fromkeys(formats):
            writers.append(make_writer(fmt, out_dir))
        for batch in batches:
            if batch.schema != EXPORT_SCHEMA:
                batch = pa.RecordBatch.from_arrays(
                    [
                        batch.column(name).cast(field.type)
                        for name, field in zip(EXPORT_SCHEMA.names, EXPORT_SCHEMA, strict=True)
                    ],
                    schema=EXPORT_SCHEMA,
                )
            for writer in writers:
                writer.write(batch)
        for writer in writers:
            written.extend(writer.finish())
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    for writer in writers:
        for staged in writer.staged():
            staged.commit()
    keep = {w.path.resolve() for w in written}
    for path in managed_paths(out_dir):
        if path.exists() and path.resolve() not in keep:
            path.unlink()
    return written


def write_text_atomic(path: Path, text: str | Iterable[str]) -> None:
    """Write a text file (card, manifest) atomically; ``text`` may be an iterable of chunks (streamed)."""
    staged = _Staged(path)
    try:
        with staged.temp.open("w", encoding="utf-8") as handle:
            handle.writelines([text] if isinstance(text, str) else text)
    except BaseException:
        staged.abort()
        raise
    staged.commit()
