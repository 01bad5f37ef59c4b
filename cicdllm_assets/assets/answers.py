"""The ``answers`` asset: an LLM answers each question, grounded in its code chunk.

Answer items are keyed by (chunk key, theme, answer template hash, model id, params,
question text) in the generation ledger; only new or retryable ones are generated and
each is committed as it completes, so a killed run resumes without duplicates.
"""

import pyarrow as pa
from dagster import AssetExecutionContext, MetadataValue, Output

from cicdllm_assets.assets._generation import generation_asset, preview, stage_env
from cicdllm_assets.generation.answers_stage import (
    answer_postprocess,
    answers_table,
)
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.resources.llm.backend_resource import BackendResource
from cicdllm_assets.storage.contract import ANSWERS_SCHEMA

STAGE = "answers"


@generation_asset(
    "answers",
    ANSWERS_SCHEMA,
    "answer",
    "Answers to each question, grounded in the code chunk (LLM; incremental via the ledger).",
)
def answers(
    context: AssetExecutionContext,
    app_config: AppConfigResource,
    llm: BackendResource,
    questions: pa.Table,
    code_chunks: pa.Table,
) -> Output[pa.Table]:
    """Generate (or reuse from the ledger) an answer for every question of this repository."""
    with stage_env(context, app_config, llm, STAGE) as env:
        planner = env.answer_planner(code_chunks)
        planned, stale = planner.plan(questions.to_pylist())
        if stale:
            context.log.warning(
                f"{stale} questions refer to chunks no longer in code_chunks (materialize questions again)"
            )
        work = [p.work for p in planned]
        stats = env.runner(context).run(work, answer_postprocess)
        entries = env.ledger.get_many(w.item.key for w in work)
        table = answers_table(planned, entries, env.repo)
        themes = sorted({p.work.item.theme for p in planned})
        return env.output(
            table,
            "answer_id",
            stats,
            {
                "questions": MetadataValue.int(questions.num_rows),
                "stale_questions": MetadataValue.int(stale),
                "prompts_drawing_on_other_files": MetadataValue.int(sum(1 for p in planned if len(p.files) > 1)),
                "repo_symbols": MetadataValue.int(len(planner.index.by_name)),
                "template_hashes": MetadataValue.json({name: env.prompts.theme(name).answer_hash for name in themes}),
                "preview": preview(table, ["path", "question", "answer"]),
            },
        )
