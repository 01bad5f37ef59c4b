"""What the ``questions`` and ``answers`` assets share: set-up, failure handling, metadata."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from dagster import AssetExecutionContext, DataVersion, Failure, MetadataValue, Output

from cicdllm_assets.config import Settings
from cicdllm_assets.failures import permanent_failure
from cicdllm_assets.generation.chunks import Chunk, select_chunks
from cicdllm_assets.generation.engine import RunStats, StageRunner
from cicdllm_assets.generation.ledger import Ledger
from cicdllm_assets.generation.prompts import (
    PromptManager,
    PromptTemplateError,
    prompt_manager,
    resolve_prompts_dir,
)
from cicdllm_assets.generation.rows import data_version_of
from cicdllm_assets.llm.base import CircuitOpenError, LLMBackend
from cicdllm_assets.llm.models.paths import ModelNotPreparedError
from cicdllm_assets.storage.state import StateStore


@dataclass
class StageEnv:
    """Everything a generation asset needs for one partition."""

    repo: str
    stage: str
    settings: Settings
    state: StateStore
    ledger: Ledger
    prompts: PromptManager
    backend: LLMBackend

    def runner(self, context: AssetExecutionContext) -> StageRunner:
        """A StageRunner logging to Dagster."""
        return StageRunner(
            backend=self.backend,
            ledger=self.ledger,
            state=self.state,
            settings=self.settings,
            repo=self.repo,
            stage=self.stage,
            log=context.log,
        )

    def output(self, table: pa.Table, id_column: str, stats: RunStats, extra: Mapping[str, Any]) -> Output[pa.Table]:
        """Close the stage (state + event log) and build the asset's Output: rich metadata,
        and a data version derived from the row ids, so unchanged rows mean an unchanged version.

        A stage whose items are not all ``ok`` ends ``incomplete`` (not ``done``), with a warning."""
        self.state.finish_stage(self.repo, self.stage, "incomplete" if stats.missing else "done")
        message = (
            f"{self.stage}: {table.num_rows} {self.stage} ({stats.generated} items generated, {stats.reused} reused,"
            f" {stats.failed} failed)"
        )
        if stats.missing:
            message += f"; incomplete: {stats.missing} of {stats.total} items have no result"
        self.state.log_event("warning" if stats.missing else "info", message, repo=self.repo)
        metadata = stage_metadata(stats, table, self.backend.model_id, {**llm_load_metadata(self.backend), **extra})
        version = DataVersion(data_version_of(table.column(id_column).to_pylist()))
        return Output(table, data_version=version, metadata=metadata)


@contextmanager
def stage_env(context: AssetExecutionContext, stage: str) -> Iterator[StageEnv]:
    """Load config, state, ledger, prompts and backend; turn known errors into clear Failures.

    A :class:`CircuitOpenError` fails the asset with the backend's message; everything
    already generated stays in the ledger, so the next run resumes.
    """
    repo = context.partition_key
    settings = context.resources.app_config.step_settings()
    state = StateStore(settings.state_target)
    try:
        try:
            prompts = prompt_manager(resolve_prompts_dir(settings))
            prompts.validate(list(settings.config.generation.themes))
        except PromptTemplateError as exc:
            state.record_failure(repo, stage, "prompts", "config", str(exc))
            raise permanent_failure(f"{stage}: invalid prompt templates: {exc}") from None
        try:
            backend = context.resources.llm.get_backend()
        except ModelNotPreparedError as exc:
            state.record_failure(repo, stage, "model", "config", str(exc))
            raise permanent_failure(f"{stage}: {exc}") from None
        env = StageEnv(repo, stage, settings, state, Ledger(state), prompts, backend)
        try:
            yield env
        except CircuitOpenError as exc:
            message = (
                f"{stage}: stopped because the LLM backend's circuit breaker opened: {exc}. "
                "Everything generated so far is committed in the ledger; re-run to resume."
            )
            state.finish_stage(repo, stage, "failed")
            state.log_event("error", message, repo=repo)
            raise Failure(description=message) from None
        except PromptTemplateError as exc:
            state.finish_stage(repo, stage, "failed")
            raise permanent_failure(f"{stage}: invalid prompt templates: {exc}") from None
        except Failure:
            state.finish_stage(repo, stage, "failed")
            raise
        except Exception as exc:
            state.finish_stage(repo, stage, "failed")
            state.log_event("error", f"{stage}: {type(exc).__name__}: {exc}", repo=repo)
            raise
    finally:
        state.close()


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


def stage_metadata(
    stats: RunStats, table: pa.Table, model_id: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Rich metadata for a generation Output."""
    data = stats.as_dict()
    metadata: dict[str, Any] = {
        "model_id": MetadataValue.text(model_id),
        "failures_by_category": MetadataValue.json(data.pop("failures_by_category")),
    }
    for key, value in data.items():
        metadata[key] = MetadataValue.float(float(value)) if isinstance(value, float) else MetadataValue.int(int(value))
    for key, value in (extra or {}).items():
        metadata[key] = value
    return metadata


def llm_load_metadata(backend: object) -> dict[str, Any]:
    """The backend's concurrency limit, observed latency, server kind and seed use (OpenAI
    backend: ``load_status()``); empty for a backend without one."""
    load_status = getattr(backend, "load_status", None)
    if load_status is None:
        return {}
    status = load_status()
    metadata: dict[str, Any] = {
        "llm_concurrency_limit": MetadataValue.int(int(status["limit"])),
        "llm_max_concurrency": MetadataValue.int(int(status["max_limit"])),
        "llm_server": MetadataValue.text(str(status["server"])),
        "llm_seed_sent": MetadataValue.bool(bool(status["seed_sent"])),
        "llm_congestion_signals": MetadataValue.int(int(status["drops"]) + int(status["latency_cuts"])),
    }
    if status.get("latency_ms") is not None:
        metadata["llm_first_token_latency_ms"] = MetadataValue.float(float(status["latency_ms"]))
    return metadata


def preview(table: pa.Table, columns: Sequence[str], rows: int = 5, width: int = 80) -> MetadataValue:
    """A small markdown table of the first rows."""
    head = table.select(list(columns)).slice(0, rows).to_pylist()
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in head:
        cells = []
        for column in columns:
            text = " ".join(str(row[column]).split()).replace("|", "\\|")
            cells.append(text if len(text) <= width else text[: width - 1] + "…")
        lines.append("| " + " | ".join(cells) + " |")
    return MetadataValue.md("\n".join(lines))
