"""The question stage: plan question items per chunk and theme, parse replies, tabulate questions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa

from cicdllm_assets.config.models import GenerationConfig
from cicdllm_assets.generation.chunks import Chunk
from cicdllm_assets.generation.engine import Postprocess, WorkItem
from cicdllm_assets.generation.ledger import (
    LedgerEntry,
    LedgerItem,
    Outcome,
    item_key,
    params_json,
)
from cicdllm_assets.generation.parsing import normalize_question, parse_questions
from cicdllm_assets.generation.prompts import ThemeTemplate
from cicdllm_assets.generation.rows import (
    chunk_columns,
    content_id,
    question_params,
    stored_flag,
)
from cicdllm_assets.llm.base import (
    GenerationResult,
)
from cicdllm_assets.quality.secrets import redact_field
from cicdllm_assets.storage.contract import QUESTIONS_SCHEMA, QuestionRow


def plan_questions(
    chunks: Sequence[Chunk], themes: Sequence[ThemeTemplate], model_id: str, gen: GenerationConfig, repo: str
) -> list[WorkItem]:
    """One question item per chunk x theme, in chunk order (themes of a chunk together)."""
    params = question_params(gen)
    pjson = params_json(params)
    work = []
    for chunk in chunks:
        for theme in themes:
            key = item_key(
                "question", theme.chunk_input(chunk, "question"), theme.name, theme.question_hash, model_id, params
            )
            item = LedgerItem(key, "question", repo, chunk.chunk_key, theme.name, theme.question_hash, model_id, pjson)
            work.append(
                WorkItem(
                    item=item,
                    chunk=chunk,
                    build=theme.question_builder(chunk, gen.questions_per_chunk),
                    desired_max_tokens=gen.question_max_tokens,
                    n_questions=gen.questions_per_chunk,
                )
            )
    return work


def question_postprocess(gen: GenerationConfig) -> Postprocess:
    """Parse a question reply; unparseable output becomes a ``parse_error`` with the raw text kept."""

    def postprocess(w: WorkItem, result: GenerationResult) -> Outcome:
        parsed = parse_questions(result.text, min_chars=gen.min_question_chars, limit=w.n_questions or None)
        if parsed.ok:  # questions reach answer prompts and tables: redacted like everything else
            questions = [redact_field(q) or q for q in parsed.questions]
            return Outcome("ok", output=redact_field(result.text), parsed=questions)
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(parsed.dropped.items())) or "nothing recognisable"
        return Outcome(
            "failed",
            output=redact_field(result.text),
            error_category="parse_error",
            error_message=f"no usable question in {len(result.text)} chars of output ({dropped})",
        )

    return postprocess


def questions_table(work: Sequence[WorkItem], entries: Mapping[str, LedgerEntry], repo: str) -> pa.Table:
    """Rows for every ok question item of ``work`` (one row per parsed question)."""
    rows: list[QuestionRow] = []
    seen: set[str] = set()
    for w in work:
        entry = entries.get(w.item.key)
        if entry is None or not entry.ok or w.item.key in seen:
            continue
        seen.add(w.item.key)
        chunk = w.chunk
        for index, question in enumerate(entry.parsed()):
            rows.append(
                {
                    "repo": repo,
                    "question_id": content_id(entry.key, normalize_question(question)),
                    "chunk_key": chunk.chunk_key,
                    "theme": entry.theme,
                    "template_hash": entry.template_hash,
                    "question": question,
                    "model_id": entry.model_id,
                    "params": entry.params_json,
                    **chunk_columns(chunk),
                    "question_index": index,
                    "generation_key": entry.key,
                    "prompt_tokens": entry.prompt_tokens,
                    "completion_tokens": entry.completion_tokens,
                    "latency_ms": entry.latency_ms,
                    "trimmed": bool(entry.trimmed),
                    "finish_reason": entry.finish_reason,
                    "seed_sent": stored_flag(entry.seed_sent),
                }
            )
    return pa.Table.from_pylist(rows, schema=QUESTIONS_SCHEMA)
