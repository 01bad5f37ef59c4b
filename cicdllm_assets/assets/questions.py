"""The ``questions`` asset: an LLM writes questions about each code chunk, per theme.

Incremental and resumable through the generation ledger: only chunk x theme items
whose content key is new (or failed with attempts left) reach the backend; the table
is rebuilt from the ledger, so a no-op re-run makes zero LLM calls.
"""

import pyarrow as pa
from dagster import AssetExecutionContext, MetadataValue, Output

from cicdllm_assets.assets._generation import generation_asset, preview, stage_env
from cicdllm_assets.generation.chunks import chunks_from_table
from cicdllm_assets.generation.questions_stage import (
    plan_questions,
    question_postprocess,
    questions_table,
)
from cicdllm_assets.generation.rows import template_hashes
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.resources.llm.backend_resource import BackendResource
from cicdllm_assets.storage.contract import QUESTIONS_SCHEMA

STAGE = "questions"


@generation_asset(
    "questions",
    QUESTIONS_SCHEMA,
    "question",
    "Questions about each code chunk, per prompt theme (LLM; incremental via the ledger).",
)
def questions(
    context: AssetExecutionContext, app_config: AppConfigResource, llm: BackendResource, code_chunks: pa.Table
) -> Output[pa.Table]:
    """Generate (or reuse from the ledger) questions for the first chunks of this repository."""
    with stage_env(context, app_config, llm, STAGE) as env:
        gen = env.settings.config.generation
        chunks = chunks_from_table(code_chunks, env.repo, gen.max_chunks_per_repo)
        themes = [env.prompts.theme(name) for name in gen.themes]
        model_id = env.backend.model_id
        work = plan_questions(chunks, themes, model_id, gen, env.repo)
        context.log.info(f"{len(chunks)} of {code_chunks.num_rows} chunks x {len(themes)} themes with {model_id}")
        stats = env.runner(context).run(work, question_postprocess(gen))
        entries = env.ledger.get_many(w.item.key for w in work)
        table = questions_table(work, entries, env.repo)
        return env.output(
            table,
            "question_id",
            stats,
            {
                "chunks": MetadataValue.int(len(chunks)),
                "chunks_available": MetadataValue.int(code_chunks.num_rows),
                "themes": MetadataValue.json(list(gen.themes)),
                "template_hashes": MetadataValue.json(template_hashes(themes)),
                "preview": preview(table, ["path", "theme", "question"]),
            },
        )
