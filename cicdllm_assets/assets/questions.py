"""The ``questions`` asset: an LLM writes questions about each code chunk, per theme.

Incremental and resumable through the generation ledger: only chunk x theme items
whose content key is new (or failed with attempts left) reach the backend; the table
is rebuilt from the ledger, so a no-op re-run makes zero LLM calls.
"""

from collections import Counter

import pyarrow as pa
from dagster import AssetExecutionContext, AssetKey, MetadataValue, Output

from cicdllm_assets.assets._generation import StageEnv, generation_asset, preview, stage_env
from cicdllm_assets.generation.answers_stage import answer_postprocess
from cicdllm_assets.generation.chunks import chunks_from_table
from cicdllm_assets.generation.engine import FollowOn
from cicdllm_assets.generation.questions_stage import (
    final_questions,
    plan_questions,
    question_postprocess,
)
from cicdllm_assets.generation.rows import template_hashes
from cicdllm_assets.quality.variety import QUESTION_NEAR_DUPLICATE
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.resources.llm.backend_resource import BackendResource
from cicdllm_assets.storage.contract import QUESTIONS_SCHEMA

STAGE = "questions"
ANSWERS = AssetKey("answers")


def answers_ahead(context: AssetExecutionContext, env: StageEnv, code_chunks: pa.Table) -> FollowOn | None:
    """The answers of each chunk whose questions are final, generated in this step's batch when
    ``generation.answers_ahead`` is on and this run materializes the answers too."""
    selected = context.job_def.asset_layer.selected_asset_keys  # the run's selection (or its job's assets)
    if not env.settings.config.generation.answers_ahead or ANSWERS not in selected:
        return None
    planner = env.answer_planner(code_chunks)
    return FollowOn(env.runner(context, "answers"), answer_postprocess, planner.ahead)


@generation_asset(
    "questions",
    QUESTIONS_SCHEMA,
    "question",
    "Questions about each code chunk, per prompt theme (LLM; incremental via the ledger).",
)
def questions(
    context: AssetExecutionContext, app_config: AppConfigResource, llm: BackendResource, code_chunks: pa.Table
) -> Output[pa.Table]:
    """Generate (or reuse from the ledger) questions for the first chunks of this repository; a chunk's
    near-duplicate questions are dropped before any answer is generated."""
    with stage_env(context, app_config, llm, STAGE) as env:
        gen = env.settings.config.generation
        chunks = chunks_from_table(code_chunks, env.repo, gen.max_chunks_per_repo)
        themes = [env.prompts.theme(name) for name in gen.themes]
        model_id = env.backend.model_id
        work = plan_questions(chunks, themes, model_id, gen, env.repo)
        context.log.info(f"{len(chunks)} of {code_chunks.num_rows} chunks x {len(themes)} themes with {model_id}")
        ahead = answers_ahead(context, env, code_chunks)
        stats = env.runner(context).run(work, question_postprocess(gen), ahead)
        entries = env.ledger.get_many(w.item.key for w in work)
        table, near_duplicates = final_questions(work, entries, env.repo)
        if near_duplicates:
            context.log.info(
                f"dropped {near_duplicates} near-duplicate questions (same chunk, Jaccard >= {QUESTION_NEAR_DUPLICATE})"
            )
        kinds = Counter(str(kind or "unknown") for kind in table.column("kind").to_pylist())
        return env.output(
            table,
            "question_id",
            stats,
            {
                "near_duplicate_questions": MetadataValue.int(near_duplicates),
                "question_kinds": MetadataValue.json(dict(sorted(kinds.items()))),
                "answers_ahead": MetadataValue.int(ahead.stats.generated if ahead else 0),
                "chunks": MetadataValue.int(len(chunks)),
                "chunks_available": MetadataValue.int(code_chunks.num_rows),
                "themes": MetadataValue.json(list(gen.themes)),
                "template_hashes": MetadataValue.json(template_hashes(themes)),
                "preview": preview(table, ["path", "theme", "question"]),
            },
        )
