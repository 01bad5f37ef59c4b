"""What the ``questions`` and ``answers`` assets share: set-up, failure handling, metadata."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
from dagster import AssetExecutionContext, MetadataValue, Output

from cicdllm_assets.assets._conventions import code_version, repo_table_asset
from cicdllm_assets.assets._step import Step, asset_step
from cicdllm_assets.config import Settings
from cicdllm_assets.generation.answers_stage import AnswerPlanner
from cicdllm_assets.generation.chunks import chunks_from_table
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
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.resources.llm.backend_resource import BackendResource


@dataclass
class StageEnv:
    """Everything a generation asset needs for one partition: the step, ledger, prompts, backend."""

    step: Step
    ledger: Ledger
    prompts: PromptManager
    backend: LLMBackend

    @property
    def repo(self) -> str:
        """The partition (repository) of this step."""
        return self.step.repo

    @property
    def settings(self) -> Settings:
        """The step's settings."""
        return self.step.settings

    def runner(self, context: AssetExecutionContext, stage: str | None = None) -> StageRunner:
        """A StageRunner (of this step's stage, or ``stage``) logging to Dagster."""
        return StageRunner(
            backend=self.backend,
            ledger=self.ledger,
            state=self.step.state,
            generation=self.settings.config.generation,
            performance=self.settings.config.performance,
            config_path=self.settings.path,
            repo=self.repo,
            stage=stage or self.step.stage,
            log=context.log,
        )

    def answer_planner(self, code_chunks: pa.Table) -> AnswerPlanner:
        """Plans this repository's answer items (over every chunk of ``code_chunks``)."""
        return AnswerPlanner.for_repo(
            chunks_from_table(code_chunks, self.repo, None),
            self.prompts,
            self.backend.model_id,
            self.settings.config.generation,
            self.repo,
            self.backend.count_tokens,
        )

    def output(self, table: pa.Table, id_column: str, stats: RunStats, extra: Mapping[str, Any]) -> Output[pa.Table]:
        """Close the stage (state + event log) and build the asset's Output: rich metadata,
        and a data version derived from the row ids, so unchanged rows mean an unchanged version.

        A stage whose items are not all ``ok`` ends ``incomplete`` (not ``done``), with a warning."""
        stage = self.step.stage
        self.step.state.finish_stage(self.repo, stage, "incomplete" if stats.missing else "done")
        message = (
            f"{stage}: {table.num_rows} {stage} ({stats.generated} items generated, {stats.reused} reused,"
            f" {stats.failed} failed)"
        )
        if stats.missing:
            message += f"; incomplete: {stats.missing} of {stats.total} items have no result"
        self.step.state.log_event("warning" if stats.missing else "info", message, repo=self.repo)
        metadata = stage_metadata(stats, table, self.backend.model_id, {**llm_load_metadata(self.backend), **extra})
        return self.step.output(table, metadata, data_version_of(table.column(id_column).to_pylist()))


def generation_asset(name: str, schema: pa.Schema, prompts: Literal["question", "answer"], description: str) -> Any:
    """The ``@asset`` decorator of a generation stage (questions, answers): per repo, pool ``llm``."""
    return repo_table_asset(
        "generation",
        code_version(name, "generation", f"assets/{name}.py", prompts=prompts),
        {"llm", "parquet"},
        schema,
        description,
        name=name,
        pool="llm",
    )


@contextmanager
def stage_env(
    context: AssetExecutionContext, app_config: AppConfigResource, llm: BackendResource, stage: str
) -> Iterator[StageEnv]:
    """:func:`asset_step` with the ledger, validated prompts and the backend (built from the
    step's settings) of a generation stage.

    Invalid prompt templates and an unprepared model fail at once (``config`` failures); a
    :class:`CircuitOpenError` fails the asset with the backend's message (each item was
    recorded by the runner); everything already generated stays in the ledger, so the next
    run resumes.
    """
    with asset_step(context, app_config, stage) as step:
        settings = step.settings
        try:
            prompts = prompt_manager(resolve_prompts_dir(settings.config.generation, settings.prompts_dir))
            prompts.validate(list(settings.config.generation.themes))
        except PromptTemplateError as exc:
            raise step.fail(
                f"{stage}: invalid prompt templates: {exc}", category=exc.category, item="prompts", permanent=True
            ) from None
        try:
            backend = llm.get_backend(settings)
        except ModelNotPreparedError as exc:
            raise step.fail(f"{stage}: {exc}", category=exc.category, item="model", permanent=True) from None
        try:
            yield StageEnv(step, Ledger(step.state), prompts, backend)
        except CircuitOpenError as exc:
            message = (
                f"{stage}: stopped because the LLM backend's circuit breaker opened: {exc}. "
                "Everything generated so far is committed in the ledger; re-run to resume."
            )
            raise step.fail(message, category=exc.category, record=False) from None
        except PromptTemplateError as exc:
            raise step.fail(
                f"{stage}: invalid prompt templates: {exc}", category=exc.category, item="prompts", permanent=True
            ) from None


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
