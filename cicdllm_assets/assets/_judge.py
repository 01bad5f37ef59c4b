"""The judge stage of the ``qa_pairs`` asset: its backend, the engine run, its metadata.

The judge's backend is built for the step from ``quality.judge.llm`` (``backend: same``:
from the ``llm`` section, i.e. the generation model) and closed after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
from dagster import AssetExecutionContext, Failure, MetadataValue

from cicdllm_assets.assets._generation import llm_load_metadata, stage_metadata
from cicdllm_assets.assets._step import permanent_failure
from cicdllm_assets.config import Settings
from cicdllm_assets.generation.chunks import chunks_from_table
from cicdllm_assets.generation.engine import StageRunner
from cicdllm_assets.generation.judge import (
    CRITERIA,
    JudgeSummary,
    apply_judgements,
    histogram_markdown,
    judge_llm,
    judge_postprocess,
    judge_sampling,
    plan_judgements,
    with_judge_columns,
)
from cicdllm_assets.generation.ledger import Ledger
from cicdllm_assets.llm.base import CircuitOpenError, LLMBackend
from cicdllm_assets.llm.models.paths import ModelNotPreparedError
from cicdllm_assets.storage.state import StateStore

STAGE = "judge"


def _own_backend(settings: Settings) -> LLMBackend:
    """A backend for the judge's own settings (``settings.config.llm`` is the judge's)."""
    if settings.config.llm.backend == "openai":
        from cicdllm_assets.llm.openai_backend import OpenAIBackend

        return OpenAIBackend.from_model_paths(settings.model_paths)
    from cicdllm_assets.resources.llm.mlx_resource import backend_from_settings

    return backend_from_settings(settings)


@contextmanager
def judge_backend(settings: Settings) -> Iterator[LLMBackend]:
    """The judge's backend for this step, built from its settings (``same``: the ``llm`` section's),
    closed after."""
    config = settings.config
    own = dataclasses.replace(
        settings, config=config.model_copy(update={"llm": judge_llm(config.quality.judge, config.llm)})
    )
    backend = _own_backend(own)
    try:
        yield backend
    finally:
        backend.close()
        if own.config.llm.backend == "mlx":
            from cicdllm_assets.llm.mlx_backend import release_models

            release_models(getattr(backend, "model_path", ""))


def judge_table(
    context: AssetExecutionContext, settings: Settings, state: StateStore, table: pa.Table, code_chunks: pa.Table
) -> tuple[pa.Table, JudgeSummary | None, dict[str, Any]]:
    """Judge the accepted pairs of a filtered qa_pairs ``table`` (judge disabled: null columns).

    Returns the table with judge columns and verdicts applied, the summary and metadata.
    """
    cfg = settings.config.quality.judge
    if not cfg.enabled:
        return with_judge_columns(table), None, {"judge_enabled": MetadataValue.bool(False)}
    repo = context.partition_key
    chunks = {c.chunk_key: c for c in chunks_from_table(code_chunks, repo, None)}
    try:
        with judge_backend(settings) as backend:
            work = plan_judgements(table.to_pylist(), chunks, backend.model_id, cfg, repo)
            ledger = Ledger(state)
            runner = StageRunner(
                backend=backend,
                ledger=ledger,
                state=state,
                generation=judge_sampling(cfg, settings.config.generation),
                performance=settings.config.performance,
                config_path=settings.path,
                repo=repo,
                stage=STAGE,
                log=context.log,
            )
            stats = runner.run([jw.work for jw in work], judge_postprocess)
            entries = ledger.get_many(jw.work.item.key for jw in work)
            load = llm_load_metadata(backend)
            model_id = backend.model_id
    except ModelNotPreparedError as exc:
        state.record_failure(repo, STAGE, "model", "config", str(exc))
        raise permanent_failure(f"{STAGE}: {exc}") from None
    except CircuitOpenError as exc:
        state.finish_stage(repo, STAGE, "failed")
        message = (
            f"{STAGE}: stopped because the judge backend's circuit breaker opened: {exc}. "
            "Every verdict so far is committed in the ledger; re-run to resume."
        )
        state.log_event("error", message, repo=repo)
        raise Failure(description=message) from None
    state.finish_stage(repo, STAGE, "done")
    judged, summary = apply_judgements(table, work, entries, cfg)
    context.log.info(
        f"{STAGE}: {summary.judged} pairs scored ({stats.generated} new, {stats.reused} from the ledger), "
        f"{summary.unscored} without a verdict; rejected: {summary.rejections or 'none'}"
    )
    metadata = {
        f"judge_{key}": value
        for key, value in stage_metadata(stats, judged.slice(0, 0), model_id, load).items()
        if key != "model_id"
    }
    metadata.update(
        {
            "judge_enabled": MetadataValue.bool(True),
            "judge_model": MetadataValue.text(model_id),
            "judge_threshold": MetadataValue.int(cfg.threshold),
            "judge_scored": MetadataValue.int(summary.judged),
            "judge_unscored": MetadataValue.int(summary.unscored),
            "judge_scores": MetadataValue.md(histogram_markdown(summary.histogram)),
            **{f"judge_mean_{c}": MetadataValue.float(round(summary.mean(c), 3)) for c in CRITERIA},
        }
    )
    return judged, summary, metadata
