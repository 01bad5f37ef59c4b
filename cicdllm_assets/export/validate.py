"""Validate a written export by reading its files back (used by the blocking asset checks).

Each check returns a :class:`CheckOutcome`: passed or not, a one-line description and
a few details (counts, the first problems found). The checks read what is on disk — the
manifest, the full-record files and every per-split file — never the in-memory result.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cicdllm_assets.export.dataset import read_manifest
from cicdllm_assets.export.records import EXPORT_COLUMNS, REQUIRED_TEXT_FIELDS, SPLITS
from cicdllm_assets.quality.dedup import exact_key
from cicdllm_assets.quality.secrets import find_secrets
from cicdllm_assets.storage.contract import EXPORT_SCHEMA

MAX_PROBLEMS = 10
RECORD_FORMATS = ("parquet", "jsonl", "csv")
"""Formats whose files hold full records (every export column), in the order :func:`read_records`
prefers them; the other formats are per-split training files."""


@dataclass
class CheckOutcome:
    """Result of one export check."""

    passed: bool
    description: str
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, problem: str) -> None:
        """Record a problem (only the first few are kept)."""
        self.passed = False
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)


@dataclass(frozen=True)
class ExportFiles:
    """The files of one export, as listed by its manifest."""

    out_dir: Path
    manifest: dict[str, Any]

    def entries(self, fmt: str | None = None) -> list[dict[str, Any]]:
        """Manifest file entries (of one format)."""
        return [f for f in self.manifest.get("files", []) if fmt is None or f["format"] == fmt]

    def split_entries(self) -> list[dict[str, Any]]:
        """Manifest entries of the per-split training files (not of :data:`RECORD_FORMATS`)."""
        return [f for f in self.entries() if f["format"] not in RECORD_FORMATS]

    def path(self, entry: dict[str, Any]) -> Path:
        """Absolute path of a manifest entry."""
        return self.out_dir / entry["path"]


def load_export(out_dir: Path) -> ExportFiles:
    """The export in ``out_dir`` (raises FileNotFoundError without a manifest)."""
    return ExportFiles(Path(out_dir), read_manifest(out_dir))


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            yield number, json.loads(line)


def read_records(export: ExportFiles) -> tuple[str, list[dict[str, Any]]] | None:
    """Full records from parquet, jsonl or csv (the first written), with the source format."""
    for fmt in RECORD_FORMATS:
        entries = export.entries(fmt)
        if not entries:
            continue
        path = export.path(entries[0])
        if fmt == "parquet":
            return fmt, pq.read_table(path).to_pylist()
        if fmt == "jsonl":
            return fmt, [row for _, row in _read_jsonl(path)]
        csv.field_size_limit(sys.maxsize)
        with open(path, encoding="utf-8", newline="") as handle:
            rows: list[dict[str, Any]] = list(csv.DictReader(handle))
        for row in rows:
            for name in ("start_line", "end_line"):
                row[name] = int(row[name])
        return fmt, rows
    return None


def _split_texts(fmt: str, record: Any) -> list[str]:
    """Every text a per-split record carries (raises KeyError/TypeError if malformed)."""
    if fmt in ("mlx_chat", "openai"):
        return [m["content"] for m in record["messages"]]
    if fmt == "mlx_completions":
        return [record["prompt"], record["completion"]]
    if fmt == "alpaca":
        return [record["instruction"], record["output"]]  # input may be empty (no code)
    if fmt == "sharegpt":
        return [c["value"] for c in record["conversations"]]
    raise ValueError(f"unknown per-split format {fmt}")


def _split_schema_problem(fmt: str, record: Any) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    if fmt in ("mlx_chat", "openai"):
        messages = record.get("messages")
        if set(record) != {"messages"} or not isinstance(messages, list) or len(messages) < 2:
            return "expected {'messages': [...]} with at least user and assistant"
        roles = [m.get("role") for m in messages if isinstance(m, dict)]
        if (
            len(roles) != len(messages)
            or roles[-2:] != ["user", "assistant"]
            or any(r not in ("system", "user", "assistant") for r in roles)
        ):
            return f"unexpected roles {roles}"
        if any(not isinstance(m.get("content"), str) or set(m) != {"role", "content"} for m in messages):
            return "each message needs exactly a string 'content' and a 'role'"
        return None
    if fmt == "mlx_completions":
        if set(record) != {"prompt", "completion"} or not all(isinstance(v, str) for v in record.values()):
            return "expected {'prompt': str, 'completion': str}"
        return None
    if fmt == "alpaca":
        if set(record) != {"instruction", "input", "output"} or not all(isinstance(v, str) for v in record.values()):
            return "expected {'instruction', 'input', 'output'} strings"
        return None
    if fmt == "sharegpt":
        conv = record.get("conversations")
        if not isinstance(conv, list) or [c.get("from") for c in conv if isinstance(c, dict)] != ["human", "gpt"]:
            return "expected conversations [human, gpt]"
        if set(record) - {"conversations", "system"} or any(not isinstance(c.get("value"), str) for c in conv):
            return "unexpected keys or non-string values"
        return None
    return f"unknown format {fmt}"


def _json_type_ok(name: str, value: object) -> bool:
    """A dataset.jsonl value has its column's type (nullable columns may be null)."""
    field = EXPORT_SCHEMA.field(name)
    if value is None:
        return field.nullable
    if pa.types.is_integer(field.type):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


def check_schema(export: ExportFiles) -> CheckOutcome:
    """Every listed file exists, parses, has the format's schema and the manifest's row count."""
    outcome = CheckOutcome(True, "every export file has its format's schema")
    for entry in export.entries():
        fmt, path = entry["format"], export.path(entry)
        if not path.is_file():
            outcome.add(f"{entry['path']}: missing")
            continue
        rows = 0
        try:
            if fmt == "parquet":
                schema = pq.read_schema(path)
                if schema.names != list(EXPORT_COLUMNS) or any(
                    schema.field(n).type != EXPORT_SCHEMA.field(n).type for n in EXPORT_COLUMNS
                ):
                    outcome.add(f"{entry['path']}: schema {schema.names} differs from the export schema")
                rows = pq.ParquetFile(path).metadata.num_rows
            elif fmt == "csv":
                csv.field_size_limit(sys.maxsize)
                with open(path, encoding="utf-8", newline="") as handle:
                    reader = csv.reader(handle)
                    header = next(reader, None)
                    if header != list(EXPORT_COLUMNS):
                        outcome.add(f"{entry['path']}: header {header} differs from the export columns")
                    rows = sum(1 for _ in reader)
            elif fmt == "jsonl":
                for number, record in _read_jsonl(path):
                    rows += 1
                    if not isinstance(record, dict) or list(record) != list(EXPORT_COLUMNS):
                        outcome.add(f"{entry['path']}:{number}: keys differ from the export columns")
                    elif not all(_json_type_ok(n, record[n]) for n in EXPORT_COLUMNS):
                        outcome.add(f"{entry['path']}:{number}: a value has the wrong type")
            else:
                for number, record in _read_jsonl(path):
                    rows += 1
                    problem = _split_schema_problem(fmt, record)
                    if problem:
                        outcome.add(f"{entry['path']}:{number}: {problem}")
        except (ValueError, OSError, pa.ArrowException) as exc:
            outcome.add(f"{entry['path']}: unreadable ({type(exc).__name__}: {exc})")
            continue
        if rows != entry["rows"]:
            outcome.add(f"{entry['path']}: {rows} rows, manifest says {entry['rows']}")
        outcome.counts[entry["path"]] = rows
    return outcome


def check_no_empty_fields(export: ExportFiles) -> CheckOutcome:
    """No required record field and no message text is empty."""
    outcome = CheckOutcome(True, "no empty question, answer, prompt or provenance field")
    loaded = read_records(export)
    if loaded is not None:
        fmt, records = loaded
        for record in records:
            for name in REQUIRED_TEXT_FIELDS:
                if not str(record.get(name) or "").strip():
                    outcome.add(f"{fmt} record {record.get('id')}: empty {name}")
        outcome.counts["records"] = len(records)
    for entry in export.split_entries():
        for number, record in _read_jsonl(export.path(entry)):
            try:
                texts = _split_texts(entry["format"], record)
            except (KeyError, TypeError):
                outcome.add(f"{entry['path']}:{number}: malformed record")
                continue
            if any(not str(t).strip() for t in texts):
                outcome.add(f"{entry['path']}:{number}: empty text")
    return outcome


def check_no_duplicates(export: ExportFiles) -> CheckOutcome:
    """No id twice, no (question, answer) pair twice, no line twice in a per-split file."""
    outcome = CheckOutcome(True, "no duplicate pair")
    loaded = read_records(export)
    if loaded is not None:
        _, records = loaded
        ids: set[str] = set()
        keys: dict[str, str] = {}
        for record in records:
            rid = str(record["id"])
            if rid in ids:
                outcome.add(f"id {rid} appears twice")
            ids.add(rid)
            key = exact_key(str(record["question"]), str(record["answer"]))
            if key in keys:
                outcome.add(f"records {keys[key]} and {rid} have the same question and answer")
            keys.setdefault(key, rid)
        outcome.counts["records"] = len(records)
    for entry in export.split_entries():
        seen: set[str] = set()
        with open(export.path(entry), encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line in seen:
                    outcome.add(f"{entry['path']}:{number}: duplicate line")
                seen.add(line)
    return outcome


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def check_no_secrets(export: ExportFiles) -> CheckOutcome:
    """No secret in any string of any export file (each distinct text scanned once)."""
    outcome = CheckOutcome(True, "no secret in any exported text")
    scanned: set[str] = set()
    texts = 0

    def scan(where: str, value: Any) -> None:
        nonlocal texts
        for text in _strings(value):
            if text in scanned or len(text) < 8:
                continue
            scanned.add(text)
            texts += 1
            findings = find_secrets(text)
            if findings:
                kinds = ", ".join(sorted({f.describe() for f in findings})[:3])
                outcome.add(f"{where}: {kinds}")

    loaded = read_records(export)
    if loaded is not None:
        fmt, records = loaded
        for record in records:
            scan(f"{fmt} record {record.get('id')}", record)
    for entry in export.split_entries():
        for number, record in _read_jsonl(export.path(entry)):
            scan(f"{entry['path']}:{number}", record)
    outcome.counts["distinct_texts_scanned"] = texts
    return outcome


def check_splits_disjoint(export: ExportFiles) -> CheckOutcome:
    """Each source file is in exactly one split; per-split files match the record split counts."""
    outcome = CheckOutcome(True, "train/valid/test are disjoint by source file")
    owner: dict[tuple[str, str], str] = {}
    for split, files in export.manifest.get("split_files", {}).items():
        for repo, path in files:
            previous = owner.setdefault((repo, path), split)
            if previous != split:
                outcome.add(f"manifest lists {repo}:{path} in {previous} and {split}")
    loaded = read_records(export)
    counts = dict.fromkeys(SPLITS, 0)
    if loaded is not None:
        fmt, records = loaded
        seen: dict[tuple[str, str], str] = {}
        for record in records:
            key = (str(record["repo"]), str(record["path"]))
            split = str(record["split"])
            if split not in counts:
                outcome.add(f"{fmt} record {record['id']}: unknown split {split!r}")
                continue
            counts[split] += 1
            previous = seen.setdefault(key, split)
            if previous != split:
                outcome.add(f"{key[0]}:{key[1]} has pairs in {previous} and {split}")
            if owner and owner.get(key) not in (None, split):
                outcome.add(f"{key[0]}:{key[1]} is in {split} but the manifest says {owner[key]}")
        for entry in export.entries():
            if entry["split"] is not None and entry["rows"] != counts.get(entry["split"], -1):
                outcome.add(
                    f"{entry['path']}: {entry['rows']} rows but {counts.get(entry['split'])} {entry['split']} records"
                )
    outcome.counts.update({f"{s}_pairs": n for s, n in counts.items()})
    outcome.counts["files"] = len(owner)
    return outcome


ALL_CHECKS = {
    "schema_valid": check_schema,
    "no_empty_fields": check_no_empty_fields,
    "no_duplicates": check_no_duplicates,
    "no_secrets": check_no_secrets,
    "splits_disjoint_by_file": check_splits_disjoint,
}
