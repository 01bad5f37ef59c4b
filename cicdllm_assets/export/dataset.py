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

import functools
import itertools
import json
import logging
import re
import secrets
import tempfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from cicdllm_assets.config.models import EXPORT_FORMATS, ExportConfig, JudgeConfig, LLMConfig
from cicdllm_assets.errors import INPUT, CicdllmError
from cicdllm_assets.export.card import render_card
from cicdllm_assets.export.judge_report import JudgeReport, judge_report, write_judge_plot
from cicdllm_assets.export.plots import write_plots
from cicdllm_assets.export.quality_report import exported_variety
from cicdllm_assets.export.records import SPLITS, user_prompt
from cicdllm_assets.export.splits import assign_splits_table
from cicdllm_assets.export.writers import WrittenFile, write_exports, write_text_atomic
from cicdllm_assets.quality.dedup import DuplicateIndex, DuplicateOf
from cicdllm_assets.quality.filters import LICENSE_EXCLUDED
from cicdllm_assets.quality.secrets import RedactionResult, may_hold_secrets, redact_secrets
from cicdllm_assets.quality.variety import QuestionVariety
from cicdllm_assets.storage.contract import EXPORT_SCHEMA, JUDGE_FIELDS

logger = logging.getLogger(__name__)

CROSS_REPO_DUPLICATE = "cross_repo_duplicate"
CROSS_REPO_NEAR_DUPLICATE = "cross_repo_near_duplicate"
MANIFEST_NAME = "manifest.json"
CARD_NAME = "README.md"
BATCH_ROWS = 2_000
WORK_MEMORY = "192MB"  # DuckDB's cap while it builds the work tables (it spills beyond)
ORDER_CHUNK = 100_000  # idx values per sort of the wide kept rows (a 1M-row wide sort needs > 192MB)
SCAN_MEMORY = "64MB"  # DuckDB's cap while the records stream out (a scan needs little; the rest was cache)
ALLOCATOR_FLUSH = "8MB"  # DuckDB hands freed memory back to the OS after each task above this
WHITESPACE = " \t\n\r\x0b\x0c"  # what str.strip() removes from a licence (ASCII)
REDACTION_CACHE = 20_000  # recently seen texts whose redaction is reused
REQUIRED_COLUMNS = ("repo", "answer_id", "question", "answer", "path", "start_line", "end_line", "accepted")
TEXT_COLUMNS = (
    "question",
    "answer",
    "context",
    "commit",
    "license",
    "language",
    "theme",
    "model_id",
    "template_hash",
    "question_id",
    "chunk_key",
    "params",
    "question_kind",
)
NOASSERTION = "NOASSERTION"


class ExportInputError(CicdllmError, ValueError, category=INPUT, permanent=True):
    """The qa_pairs input cannot be exported (missing columns, bad formats)."""


# Columns the result keeps counts by (low cardinality: the card, metadata and summary use them).
GROUP_COLUMNS: tuple[str, ...] = ("repo", "split", "theme", "license", "commit", "model_id", "template_hash")


@dataclass
class DatasetResult:
    """What an export produced: files and every count the card and metadata show.

    ``groups`` holds the exported pairs counted per :data:`GROUP_COLUMNS` combination (the
    records themselves are only in the files: the export streams them).
    """

    out_dir: Path
    groups: pa.Table
    files: list[WrittenFile]
    input_pairs: int
    accepted_pairs: int
    rejections: dict[str, int]
    excluded_repos: dict[str, dict[str, Any]]
    redactions: dict[str, int]
    notes: list[str] = field(default_factory=list)
    card_path: Path | None = None
    manifest_path: Path | None = None
    variety: QuestionVariety | None = None
    answer_words: list[int] = field(default_factory=list)
    plot_paths: dict[str, Path] = field(default_factory=dict)
    judge: JudgeReport | None = None

    @property
    def exported_pairs(self) -> int:
        """Pairs written to the dataset."""
        return int(pc.sum(self.groups.column("pairs")).as_py() or 0) if self.groups.num_rows else 0

    def counts_by(self, *columns: str) -> list[tuple[Any, ...]]:
        """Sorted (values..., count) rows grouped by export columns."""
        if self.groups.num_rows == 0:
            return []
        grouped = self.groups.group_by(list(columns)).aggregate([("pairs", "sum")])
        rows = [
            (*(grouped.column(c)[i].as_py() for c in columns), grouped.column("pairs_sum")[i].as_py())
            for i in range(grouped.num_rows)
        ]
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
        return pa.table(
            {
                "repo": pa.array([r[0] for r in rows], pa.string()),
                "split": pa.array([r[1] for r in rows], pa.string()),
                "theme": pa.array([r[2] for r in rows], pa.string()),
                "pairs": pa.array([r[3] for r in rows], pa.int64()),
            }
        )


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
        str(r): str(lic)
        for r, lic in zip(
            repositories.column("repo").to_pylist(), repositories.column("license").to_pylist(), strict=True
        )
        if r is not None and lic
    }


# ------------------------------------------------------------------------ main entry


def build_training_dataset(
    qa_pairs: pa.Table | Sequence[Path],
    export: ExportConfig,
    *,
    out_dir: Path,
    work_dir: Path,
    llm: LLMConfig,
    judge: JudgeConfig,
    state_target: str | Path,
    repositories: pa.Table | None = None,
    formats: Sequence[str] | None = None,
) -> DatasetResult:
    """Filter, deduplicate, redact, split and write ``qa_pairs`` (a table or its Parquet files)
    into ``out_dir`` as the ``export`` section says.

    Streams: the pairs pass through a DuckDB work database below ``work_dir`` (the data dir;
    memory capped at :data:`WORK_MEMORY`, spilling to disk) and reach the writers batch by
    batch, so peak memory does not grow with the number of pairs. ``llm``, ``judge`` and
    ``state_target`` (its ledger) are what the dataset card reports besides the export.
    """
    chosen = validate_formats(formats if formats is not None else export.formats)
    work_dir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix=".export-work-", dir=work_dir) as work,
        duckdb.connect(str(Path(work) / "work.duckdb")) as con,
    ):
        con.execute(f"SET memory_limit = '{WORK_MEMORY}'")
        con.execute(f"SET allocator_flush_threshold = '{ALLOCATOR_FLUSH}'")
        con.execute(f"SET temp_directory = '{Path(work) / 'spill'}'".replace("\\", "/"))
        con.execute("SET threads = 1")
        con.execute("SET preserve_insertion_order = false")
        card = functools.partial(render_card, export=export, llm=llm, judge=judge, state_target=state_target)
        return _build(con, qa_pairs, export, card, repositories, chosen, Path(out_dir))


def _source(con: duckdb.DuckDBPyConnection, qa_pairs: pa.Table | Sequence[Path]) -> None:
    """View ``src`` over the input; missing optional columns read as empty text."""
    if isinstance(qa_pairs, pa.Table):
        con.register("qa_pairs_in", qa_pairs)
        con.execute("CREATE VIEW src_raw AS SELECT * FROM qa_pairs_in")
    else:
        paths = [str(p) for p in qa_pairs]
        if not paths:
            raise ExportInputError("no qa_pairs tables to export: materialize qa_pairs first")
        con.read_parquet(paths, union_by_name=True).create_view("src_raw")
    present = {row[0] for row in con.execute("DESCRIBE src_raw").fetchall()}
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    if missing:
        raise ExportInputError(f"qa_pairs is missing columns {missing}; materialize qa_pairs again")
    texts = [f"coalesce(CAST({c} AS VARCHAR), '') AS {c}" if c in present else f"'' AS {c}" for c in TEXT_COLUMNS]
    judge = [
        f"CAST({f.name if f.name in present else 'NULL'} AS {'BIGINT' if pa.types.is_integer(f.type) else 'VARCHAR'})"
        f" AS {f.name}"
        for f in JUDGE_FIELDS
    ]
    con.execute(f"""
        CREATE VIEW src AS SELECT
            CAST(repo AS VARCHAR) AS repo, CAST(path AS VARCHAR) AS path, CAST(answer_id AS VARCHAR) AS answer_id,
            coalesce(CAST(start_line AS BIGINT), 0) AS start_line, coalesce(CAST(end_line AS BIGINT), 0) AS end_line,
            coalesce(CAST(accepted AS BOOLEAN), false) AS accepted,
            {"CAST(reject_reason AS VARCHAR)" if "reject_reason" in present else "NULL"} AS reject_reason,
            {
        "coalesce(array_to_string(context_files, ','), CAST(path AS VARCHAR))"
        if "context_files" in present
        else "CAST(path AS VARCHAR)"
    } AS context_files,
            {", ".join(texts)}, {", ".join(judge)}
        FROM src_raw""")  # noqa: S608 - column names are constants


def _build(
    con: duckdb.DuckDBPyConnection,
    qa_pairs: pa.Table | Sequence[Path],
    export_cfg: ExportConfig,
    card: Callable[[DatasetResult, list[str]], str],
    repositories: pa.Table | None,
    chosen: list[str],
    target: Path,
) -> DatasetResult:
    _source(con, qa_pairs)
    input_pairs = _scalar(con, "SELECT count(*) FROM src")
    rejections: Counter[str] = Counter()
    for reason, count in con.execute(
        "SELECT coalesce(nullif(reject_reason, ''), 'unspecified'), count(*) FROM src WHERE NOT accepted GROUP BY 1"
    ).fetchall():
        rejections[str(reason)] += int(count)

    # Identity is content: the same answer id from two partitions is one pair (the first in
    # (repo, path, line, id) order); ``idx`` is that order, the order every later step visits.
    con.execute("CREATE TABLE acc AS SELECT * FROM src WHERE accepted")
    con.execute("""
        CREATE TABLE ids AS SELECT rid, row_number() OVER (ORDER BY repo, path, start_line, answer_id) - 1 AS idx
        FROM (SELECT rowid AS rid, repo, path, start_line, answer_id,
                     row_number() OVER (PARTITION BY answer_id ORDER BY repo, path, start_line, answer_id) AS rk
              FROM acc) WHERE rk = 1""")
    accepted_pairs = _scalar(con, "SELECT count(*) FROM ids")
    if accepted_pairs < _scalar(con, "SELECT count(*) FROM acc"):
        # a vendored file shared by two repos shares its generations: one pair, counted once
        rejections[CROSS_REPO_DUPLICATE] += _scalar(con, "SELECT count(*) FROM acc") - accepted_pairs

    # 1. licences: the repositories table is the current word on a repo's licence; the row's copy is a fallback
    repo_license = _repo_licenses(repositories)
    licenses = pa.table(
        {
            "repo": pa.array(list(repo_license), pa.string()),
            "license": pa.array(list(repo_license.values()), pa.string()),
        }
    )
    con.register("repo_licenses", licenses)
    con.execute(
        """
        CREATE TABLE pairs AS SELECT ids.idx, acc.* EXCLUDE (license),
            coalesce(nullif(rl.license, ''), nullif(trim(acc.license, ?), ''), ?) AS license
        FROM ids JOIN acc ON acc.rowid = ids.rid LEFT JOIN repo_licenses rl ON rl.repo = acc.repo""",
        [WHITESPACE, NOASSERTION],
    )
    con.execute("DROP TABLE acc")
    allowed = [
        (lic, license_allowed(lic, export_cfg.allowed_licenses))
        for (lic,) in con.execute("SELECT DISTINCT license FROM pairs").fetchall()
    ]
    con.register(
        "license_verdicts",
        pa.table(
            {
                "license": pa.array([a[0] for a in allowed], pa.string()),
                "ok": pa.array([a[1] for a in allowed], pa.bool_()),
            }
        ),
    )
    con.execute("CREATE TABLE verdicts AS SELECT * FROM license_verdicts")
    excluded: dict[str, dict[str, Any]] = {}
    for repo, lic, count in con.execute(
        "SELECT repo, arg_min(license, idx), count(*) FROM pairs JOIN verdicts USING (license) "
        "WHERE NOT ok GROUP BY repo ORDER BY repo"
    ).fetchall():
        excluded[str(repo)] = {
            "license": lic,
            "pairs": int(count),
            "reason": (
                "no licence found (NOASSERTION): if you may use its code (your own repository, say),"
                " add NOASSERTION to export.allowed_licenses"
                if (lic or NOASSERTION) == NOASSERTION
                else f"licence {lic!r} is not in export.allowed_licenses"
            ),
        }
        rejections[LICENSE_EXCLUDED] += int(count)

    # 2. duplicates across repositories (within-repo ones were removed by qa_pairs)
    index = DuplicateIndex(con, export_cfg.near_duplicate_threshold, texts="pairs")
    kept_sql = "SELECT idx, question, answer FROM pairs JOIN verdicts USING (license) WHERE ok"
    for batch in con.cursor().sql(kept_sql).to_arrow_reader(BATCH_ROWS):
        index.add(batch.column(0).to_pylist(), batch.column(1).to_pylist(), batch.column(2).to_pylist())
    con.execute("CREATE TABLE dropped (idx BIGINT, kept BIGINT, kind VARCHAR)")
    _insert_duplicates(con, index.duplicates())
    for same_repo, kind, count in con.execute("""
        SELECT a.repo = b.repo, d.kind, count(*) FROM dropped d
        JOIN pairs a ON a.idx = d.idx JOIN pairs b ON b.idx = d.kept GROUP BY ALL""").fetchall():
        if kind == "duplicate":
            rejections["duplicate" if same_repo else CROSS_REPO_DUPLICATE] += int(count)
        else:
            rejections["near_duplicate" if same_repo else CROSS_REPO_NEAR_DUPLICATE] += int(count)
    con.execute("""
        CREATE TABLE kept AS SELECT pairs.* FROM pairs JOIN verdicts USING (license)
        WHERE ok AND idx NOT IN (SELECT idx FROM dropped)""")

    # 3. split by file
    n_files = assign_splits_table(con, "SELECT DISTINCT repo, path FROM kept", "files", export_cfg.split)

    # 4. records with a second secret scan of every text field, in the files' order; 5. write
    redactions: Counter[str] = Counter()
    system = _redactor(redactions)(export_cfg.system_prompt)
    # Records leave in (split, repo, path, line, id) order = (split, idx): the rows are stored once in
    # idx order, then each split is a plain scan in storage order (no wide sort held while writing).
    con.execute("SET preserve_insertion_order = true")
    _create_ordered(con, accepted_pairs)
    con.execute("DROP TABLE kept")
    con.execute(f"SET memory_limit = '{SCAN_MEMORY}'")  # evicts the cached blocks of the build
    variety, answer_words = exported_variety(con, "ordered")  # a narrow top-N, a 20k-row sort and an aggregate
    splits = (_split_batches(con, name) for name in SPLITS)
    batches = _records(_rebatch(itertools.chain.from_iterable(splits), BATCH_ROWS), system, _redactor(redactions))
    groups = GroupCounter()
    files = write_exports((groups.add(b) for b in batches), chosen, target)
    result = DatasetResult(
        out_dir=target,
        groups=groups.table(),
        files=files,
        input_pairs=input_pairs,
        accepted_pairs=accepted_pairs,
        rejections=dict(sorted(rejections.items())),
        excluded_repos=dict(sorted(excluded.items())),
        redactions=dict(sorted(redactions.items())),
    )
    result.variety, result.answer_words = variety, answer_words
    counts = result.split_counts()
    for split in SPLITS:
        if counts[split] == 0:
            result.notes.append(
                f"split '{split}' is empty ({n_files} source file(s)); its per-split files were not written"
                + (" — mlx-lm will train without validation" if split == "valid" else "")
            )
    result.judge = judge_report(con, "src", "ordered")
    if result.judge.scored:
        result.judge.plot_path = write_judge_plot(result.judge, target)
    result.manifest_path = target / MANIFEST_NAME
    write_text_atomic(result.manifest_path, _manifest_text(con, result, chosen))
    result.plot_paths = write_plots(result, target)
    result.card_path = target / CARD_NAME
    write_text_atomic(result.card_path, card(result, chosen))
    logger.info("exported %d pairs to %s (%s)", result.exported_pairs, target, ", ".join(chosen))
    return result


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    rows = con.execute(sql).fetchall()
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def _create_ordered(con: duckdb.DuckDBPyConnection, idx_bound: int) -> None:
    """``ordered``: the kept rows with their split, stored in idx order. Sorted :data:`ORDER_CHUNK`
    idx values at a time (each a bounded sort appended in order), so no sort of every wide row."""
    select = "SELECT kept.*, files.split FROM kept JOIN files USING (repo, path)"
    con.execute(f"CREATE TABLE ordered AS {select} LIMIT 0")
    for low in range(0, max(idx_bound, 1), ORDER_CHUNK):
        con.execute(
            f"INSERT INTO ordered {select} WHERE idx >= ? AND idx < ? ORDER BY idx",
            [low, low + ORDER_CHUNK],
        )


def _insert_duplicates(con: duckdb.DuckDBPyConnection, duplicates: Iterable[DuplicateOf]) -> None:
    """Store duplicates in the ``dropped`` table as they stream in, a batch at a time."""
    stream = iter(duplicates)
    while batch := list(itertools.islice(stream, BATCH_ROWS)):
        con.register(
            "dropped_in",
            pa.table(
                {"idx": [d.index for d in batch], "kept": [d.kept for d in batch], "kind": [d.kind for d in batch]}
            ),
        )
        con.execute("INSERT INTO dropped SELECT * FROM dropped_in")
        con.unregister("dropped_in")


def _redactor(redactions: Counter[str]) -> Callable[[str], str]:
    """``text -> redacted text``, counting every secret found; results of recent texts are reused
    (a chunk's text is shared by all its pairs) in a bounded cache."""
    cache: OrderedDict[str, RedactionResult] = OrderedDict()

    def clean(text: str) -> str:
        result = cache.get(text)
        if result is None:
            result = cache[text] = redact_secrets(text)
            if len(cache) > REDACTION_CACHE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(text)
        redactions.update(result.counts)
        return result.text

    return clean


def _split_batches(con: duckdb.DuckDBPyConnection, split: str) -> Iterator[pa.RecordBatch]:
    """One split's kept rows in storage (idx) order."""
    yield from con.cursor().sql("SELECT * FROM ordered WHERE split = ?", params=[split]).to_arrow_reader(BATCH_ROWS)


def _rebatch(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The same rows in batches of exactly ``rows`` (the last may be shorter), across input boundaries."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows).combine_chunks().to_batches()[0]
            rest = table.slice(rows)
            pending, count = ([rest.combine_chunks().to_batches()[0]] if rest.num_rows else []), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def _clean_all(texts: list[str], clean: Callable[[str], str]) -> list[str]:
    """Redacted ``texts``: one prefilter pass over the batch; only flagged texts are scanned."""
    return [clean(text) if flagged else text for text, flagged in zip(texts, may_hold_secrets(texts), strict=True)]


def _records(reader: Iterable[pa.RecordBatch], system: str, clean: Callable[[str], str]) -> Iterator[pa.RecordBatch]:
    """Export records (redacted, with the user prompt) from batches of kept pairs."""
    for batch in reader:
        cols = {name: batch.column(name).to_pylist() for name in batch.schema.names}
        n = batch.num_rows
        question, answer, context = (_clean_all(cols[name], clean) for name in ("question", "answer", "context"))
        rationale = [
            r if r is None else t
            for r, t in zip(
                cols["judge_rationale"], _clean_all([r or "" for r in cols["judge_rationale"]], clean), strict=True
            )
        ]
        prompt = [
            user_prompt(
                question[i],
                cols["path"][i],
                cols["start_line"][i],
                cols["end_line"][i],
                cols["language"][i],
                context[i],
            )
            for i in range(n)
        ]
        columns = {
            **cols,
            "id": cols["answer_id"],
            "system": [system] * n,
            "question": question,
            "answer": answer,
            "context": context,
            "prompt": prompt,
            "judge_rationale": rationale,
        }
        yield pa.RecordBatch.from_arrays(
            [pa.array(columns[f.name], f.type) for f in EXPORT_SCHEMA], schema=EXPORT_SCHEMA
        )


class GroupCounter:
    """Counts records per :data:`GROUP_COLUMNS` combination while they stream past."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, ...]] = Counter()

    def add(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Count one batch and pass it on."""
        columns = [batch.column(name).to_pylist() for name in GROUP_COLUMNS]
        self.counts.update(zip(*columns, strict=True))
        return batch

    def table(self) -> pa.Table:
        """One row per combination with its ``pairs``."""
        keys = sorted(self.counts)
        data: dict[str, pa.Array] = {
            name: pa.array([k[i] for k in keys], pa.string()) for i, name in enumerate(GROUP_COLUMNS)
        }
        data["pairs"] = pa.array([self.counts[k] for k in keys], pa.int64())
        return pa.table(data)


def _manifest_text(con: duckdb.DuckDBPyConnection, result: DatasetResult, formats: Sequence[str]) -> Iterator[str]:
    """``manifest.json`` as ``json.dumps(manifest, indent=2, sort_keys=True)`` writes it, in chunks:
    the files of each split (one entry per source file) stream from the ``files`` table."""
    marker = json.dumps(f"\x00split_files-{secrets.token_hex(8)}")
    for chunk in json.JSONEncoder(indent=2, sort_keys=True).iterencode(_manifest(result, formats, json.loads(marker))):
        if chunk == marker:  # the pure-Python encoder (indent) yields each string value as one chunk
            yield from _split_files_text(con)
        else:
            yield chunk
    yield "\n"


def _split_files_text(con: duckdb.DuckDBPyConnection) -> Iterator[str]:
    """``{split: [[repo, path], ...]}`` from the ``files`` table, as the value of a top-level manifest key."""
    item = "\n" + " " * 6
    yield "{"
    for n, split in enumerate(sorted(SPLITS)):
        yield ("\n    " if n == 0 else ",\n    ") + json.dumps(split) + ": "
        sql = "SELECT repo, path FROM files WHERE split = ? ORDER BY repo, path"
        empty = True
        for batch in con.cursor().sql(sql, params=[split]).to_arrow_reader(BATCH_ROWS):
            for repo, path in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
                yield ("[" if empty else ",") + item + json.dumps([repo, path], indent=2).replace("\n", item)
                empty = False
        yield "[]" if empty else "\n    ]"
    yield "\n  }"


def _manifest(result: DatasetResult, formats: Sequence[str], split_files: Any) -> dict[str, Any]:
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "formats": list(formats),
        "pairs": result.exported_pairs,
        "splits": result.split_counts(),
        "files": [
            {
                "format": f.format,
                "split": f.split,
                "path": str(f.path.relative_to(result.out_dir)),
                "rows": f.rows,
                "bytes": f.bytes,
            }
            for f in result.files
        ],
        "split_files": split_files,
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
