"""Build the training dataset from ``qa_pairs`` rows and write every export format.

Shared by the ``training_dataset`` asset and ``cicdllm export``. Steps, in order:

1. keep accepted pairs;
2. licence filter (``export.allowed_licenses``; SPDX ``OR``/``AND`` expressions understood);
   excluded repos are reported with their licence and pair count;
3. exact and near-duplicate removal across repositories (MinHash LSH);
4. a second secret scan of every exported text field (redacted; counted per type);
5. deterministic file-disjoint train/valid/test split;
6. streamed, atomic writes of every configured format, the dataset card (README.md)
   and ``manifest.json`` (files, counts, split files) that the asset checks read.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from cicdllm_assets.config import Settings
from cicdllm_assets.config.models import EXPORT_FORMATS
from cicdllm_assets.export.card import render_card
from cicdllm_assets.export.records import EXPORT_SCHEMA, SPLITS, user_prompt
from cicdllm_assets.export.splits import assign_splits
from cicdllm_assets.export.writers import WrittenFile, write_exports, write_text_atomic
from cicdllm_assets.quality.dedup import find_duplicates
from cicdllm_assets.quality.filters import LICENSE_EXCLUDED
from cicdllm_assets.quality.pairs import cell_text
from cicdllm_assets.quality.secrets import RedactionResult, redact_secrets

logger = logging.getLogger(__name__)

CROSS_REPO_DUPLICATE = "cross_repo_duplicate"
CROSS_REPO_NEAR_DUPLICATE = "cross_repo_near_duplicate"
MANIFEST_NAME = "manifest.json"
CARD_NAME = "README.md"
BATCH_ROWS = 2_000
NOASSERTION = "NOASSERTION"


class ExportInputError(ValueError):
    """The qa_pairs input cannot be exported (missing columns, bad formats)."""


@dataclass
class DatasetResult:
    """What an export produced: records, files and every count the card and metadata show."""

    out_dir: Path
    records: pa.Table
    files: list[WrittenFile]
    input_pairs: int
    accepted_pairs: int
    rejections: dict[str, int]
    excluded_repos: dict[str, dict[str, Any]]
    redactions: dict[str, int]
    split_files: dict[str, list[list[str]]]
    notes: list[str] = field(default_factory=list)
    card_path: Path | None = None
    manifest_path: Path | None = None

    @property
    def exported_pairs(self) -> int:
        """Pairs written to the dataset."""
        return self.records.num_rows

    def counts_by(self, *columns: str) -> list[tuple[Any, ...]]:
        """Sorted (values..., count) rows grouped by export columns."""
        if self.records.num_rows == 0:
            return []
        grouped = self.records.group_by(list(columns)).aggregate([("id", "count")])
        rows = [(*(grouped.column(c)[i].as_py() for c in columns), grouped.column("id_count")[i].as_py())
                for i in range(grouped.num_rows)]
        return sorted(rows)

    def split_counts(self) -> dict[str, int]:
        """Pairs per split (all splits present, possibly 0)."""
        counts = dict.fromkeys(SPLITS, 0)
        for split, count in self.counts_by("split"):
            counts[split] = count
        return counts

    def summary_table(self) -> pa.Table:
        """Pairs per repo, split and theme."""
        rows = self.counts_by("repo", "split", "theme")
        return pa.table({
            "repo": pa.array([r[0] for r in rows], pa.string()),
            "split": pa.array([r[1] for r in rows], pa.string()),
            "theme": pa.array([r[2] for r in rows], pa.string()),
            "pairs": pa.array([r[3] for r in rows], pa.int64()),
        })


# ------------------------------------------------------------------------ licences


def _spdx_allowed(expression: str, allowed: set[str]) -> bool:
    """An SPDX expression is allowed if any OR-alternative has all its AND-terms allowed."""
    cleaned = expression.replace("(", " ").replace(")", " ").strip()
    if not cleaned:
        return False
    for alternative in re.split(r"\s+OR\s+", cleaned, flags=re.IGNORECASE):
        terms = [t.strip() for t in re.split(r"\s+AND\s+", alternative, flags=re.IGNORECASE) if t.strip()]
        terms = [re.split(r"\s+WITH\s+", t, flags=re.IGNORECASE)[0].strip() for t in terms]
        if terms and all(t.lower() in allowed for t in terms):
            return True
    return False


def license_allowed(license_id: str, allowed_licenses: Iterable[str]) -> bool:
    """Whether a repo licence (SPDX id or expression) passes the allow-list (case-insensitive)."""
    return _spdx_allowed(license_id or NOASSERTION, {a.lower() for a in allowed_licenses})


# ------------------------------------------------------------------------ helpers


def _require(table: pa.Table, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ExportInputError(f"qa_pairs is missing columns {missing}; materialize qa_pairs again")


def validate_formats(formats: Iterable[str]) -> list[str]:
    """Known formats, de-duplicated in order; raises on an unknown one."""
    chosen = list(dict.fromkeys(formats))
    unknown = [f for f in chosen if f not in EXPORT_FORMATS]
    if unknown:
        raise ExportInputError(f"unknown export format(s) {unknown}; known: {', '.join(EXPORT_FORMATS)}")
    if not chosen:
        raise ExportInputError("no export format selected")
    return chosen


def _repo_licenses(repositories: pa.Table | None) -> dict[str, str]:
    if repositories is None or "repo" not in repositories.column_names or "license" not in repositories.column_names:
        return {}
    return {
        str(r): str(lic) for r, lic in zip(
            repositories.column("repo").to_pylist(), repositories.column("license").to_pylist(), strict=True
        ) if r is not None and lic
    }


def _batches(rows: list[dict[str, Any]], size: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    for start in range(0, len(rows), size):
        yield pa.RecordBatch.from_pylist(rows[start : start + size], schema=EXPORT_SCHEMA)


# ------------------------------------------------------------------------ main entry


def build_training_dataset(
    qa_pairs: pa.Table,
    settings: Settings,
    *,
    repositories: pa.Table | None = None,
    formats: Sequence[str] | None = None,
    out_dir: Path | None = None,
) -> DatasetResult:
    """Filter, deduplicate, redact, split and write ``qa_pairs`` to the export dir."""
    export_cfg = settings.config.export
    chosen = validate_formats(formats if formats is not None else export_cfg.formats)
    target = Path(out_dir) if out_dir is not None else settings.export_dir
    _require(qa_pairs, ["repo", "answer_id", "question", "answer", "path", "start_line", "end_line", "accepted"])

    rows = qa_pairs.to_pylist()
    input_pairs = len(rows)
    rejections: Counter[str] = Counter(
        str(r.get("reject_reason")) for r in rows if not r.get("accepted") and r.get("reject_reason")
    )
    unknown_rejected = sum(1 for r in rows if not r.get("accepted") and not r.get("reject_reason"))
    if unknown_rejected:
        rejections["unspecified"] += unknown_rejected
    accepted = [r for r in rows if r.get("accepted")]
    # Identity is content: the same answer id from two partitions is one pair.
    by_id: dict[str, dict[str, Any]] = {}
    for r in sorted(accepted, key=lambda r: (str(r["repo"]), str(r["path"]), int(r["start_line"] or 0),
                                              str(r["answer_id"]))):
        if by_id.setdefault(str(r["answer_id"]), r) is not r:
            # a vendored file shared by two repos shares its generations: one pair, counted once
            rejections[CROSS_REPO_DUPLICATE] += 1
    accepted = list(by_id.values())
    accepted_pairs = len(accepted)

    # 1. licences
    repo_license = _repo_licenses(repositories)
    kept: list[dict[str, Any]] = []
    excluded: dict[str, dict[str, Any]] = {}
    for r in accepted:
        # The repositories table is the current word on a repo's licence; the row's copy is a fallback.
        lic = repo_license.get(str(r["repo"]), "") or cell_text(r.get("license")).strip() or NOASSERTION
        r["license"] = lic
        if license_allowed(lic, export_cfg.allowed_licenses):
            kept.append(r)
            continue
        info = excluded.setdefault(str(r["repo"]), {
            "license": lic, "pairs": 0,
            "reason": f"licence {lic!r} is not in export.allowed_licenses",
        })
        info["pairs"] += 1
        rejections[LICENSE_EXCLUDED] += 1

    # 2. duplicates across repositories (within-repo ones were removed by qa_pairs)
    duplicates = find_duplicates(
        [cell_text(r["question"]) for r in kept],
        [cell_text(r["answer"]) for r in kept],
        export_cfg.near_duplicate_threshold,
    )
    dropped = {d.index for d in duplicates}
    for d in duplicates:
        same_repo = kept[d.index]["repo"] == kept[d.kept]["repo"]
        if d.kind == "duplicate":
            rejections["duplicate" if same_repo else CROSS_REPO_DUPLICATE] += 1
        else:
            rejections["near_duplicate" if same_repo else CROSS_REPO_NEAR_DUPLICATE] += 1
    kept = [r for i, r in enumerate(kept) if i not in dropped]

    # 3. split by file
    assignment = assign_splits(((str(r["repo"]), str(r["path"])) for r in kept), export_cfg.split)

    # 4. records with a second secret scan of every text field
    redactions: Counter[str] = Counter()
    memo: dict[str, RedactionResult] = {}  # a chunk's text is shared by all its pairs

    def clean(value: Any) -> str:
        text = cell_text(value)
        result = memo.get(text)
        if result is None:
            result = memo[text] = redact_secrets(text)
        redactions.update(result.counts)
        return result.text

    system = clean(export_cfg.system_prompt)
    records: list[dict[str, Any]] = []
    for r in kept:
        question, answer, context = clean(r["question"]), clean(r["answer"]), clean(r.get("context"))
        path, language = cell_text(r["path"]), cell_text(r.get("language"))
        start, end = int(r["start_line"] or 0), int(r["end_line"] or 0)
        records.append({
            "id": str(r["answer_id"]),
            "split": assignment[(str(r["repo"]), str(r["path"]))],
            "repo": str(r["repo"]),
            "path": path,
            "start_line": start,
            "end_line": end,
            "commit": cell_text(r.get("commit")),
            "license": str(r["license"]),
            "language": language,
            "theme": cell_text(r.get("theme")),
            "system": system,
            "question": question,
            "context": context,
            "prompt": user_prompt(question, path, start, end, language, context),
            "answer": answer,
            "model_id": cell_text(r.get("model_id")),
            "template_hash": cell_text(r.get("template_hash")),
            "question_id": cell_text(r.get("question_id")),
            "chunk_key": cell_text(r.get("chunk_key")),
            "params": cell_text(r.get("params")),
        })
    order = {name: i for i, name in enumerate(SPLITS)}
    records.sort(key=lambda x: (order[x["split"]], x["repo"], x["path"], x["start_line"], x["id"]))
    table = pa.Table.from_pylist(records, schema=EXPORT_SCHEMA)

    # 5. write
    files = write_exports(_batches(records), chosen, target)
    split_files: dict[str, list[list[str]]] = {name: [] for name in SPLITS}
    for (repo, path), split in sorted(assignment.items()):
        split_files[split].append([repo, path])
    result = DatasetResult(
        out_dir=target, records=table, files=files, input_pairs=input_pairs, accepted_pairs=accepted_pairs,
        rejections=dict(sorted(rejections.items())), excluded_repos=dict(sorted(excluded.items())),
        redactions=dict(sorted(redactions.items())), split_files=split_files,
    )
    counts = result.split_counts()
    n_files = len(assignment)
    for split in SPLITS:
        if counts[split] == 0:
            result.notes.append(
                f"split '{split}' is empty ({n_files} source file(s)); its per-split files were not written"
                + (" — mlx-lm will train without validation" if split == "valid" else "")
            )
    result.manifest_path = target / MANIFEST_NAME
    write_text_atomic(result.manifest_path, json.dumps(_manifest(result, chosen), indent=2, sort_keys=True) + "\n")
    result.card_path = target / CARD_NAME
    write_text_atomic(result.card_path, render_card(result, chosen, settings))
    logger.info("exported %d pairs to %s (%s)", table.num_rows, target, ", ".join(chosen))
    return result


def _manifest(result: DatasetResult, formats: Sequence[str]) -> dict[str, Any]:
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "formats": list(formats),
        "pairs": result.exported_pairs,
        "splits": result.split_counts(),
        "files": [
            {"format": f.format, "split": f.split, "path": str(f.path.relative_to(result.out_dir)), "rows": f.rows,
             "bytes": f.bytes}
            for f in result.files
        ],
        "split_files": result.split_files,
        "rejections": result.rejections,
        "excluded_repos": result.excluded_repos,
        "redactions": result.redactions,
        "notes": result.notes,
    }


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """The manifest of the export in ``out_dir`` (raises FileNotFoundError if none)."""
    data: dict[str, Any] = json.loads((Path(out_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
    return data


def rejection_counts(table: pa.Table) -> Mapping[str, int]:
    """Rejected pairs per reason in a qa_pairs table."""
    if "reject_reason" not in table.column_names:
        return {}
    return dict(sorted(Counter(r for r in table.column("reject_reason").to_pylist() if r).items()))
