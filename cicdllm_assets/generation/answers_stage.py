"""The answer stage: plan one answer item per question, tabulate answers."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from cicdllm_assets.config.models import GenerationConfig
from cicdllm_assets.generation.chunks import Chunk
from cicdllm_assets.generation.engine import WorkItem
from cicdllm_assets.generation.ledger import (
    LedgerEntry,
    LedgerItem,
    Outcome,
    item_key,
    params_json,
)
from cicdllm_assets.generation.prompts import PromptManager, ThemeTemplate
from cicdllm_assets.generation.questions_stage import final_questions
from cicdllm_assets.generation.rows import (
    answer_params,
    chunk_columns,
    stored_flag,
)
from cicdllm_assets.generation.stopping import answer_stop
from cicdllm_assets.generation.symbols import RepoContext, RepoIndex, context_files, repo_context
from cicdllm_assets.llm.base import (
    GenerationResult,
)
from cicdllm_assets.quality.secrets import redact_field
from cicdllm_assets.storage.contract import ANSWERS_SCHEMA, AnswerRow, QuestionRow


@dataclass(frozen=True)
class AnswerWork:
    """An answer item with the question row it answers."""

    work: WorkItem
    question: QuestionRow
    files: list[str] = field(default_factory=list)
    """Every file the answer prompt drew on (the chunk's, then its repo context's)."""


def plan_answers(
    question_rows: Sequence[QuestionRow],
    chunks_by_key: Mapping[str, Chunk],
    prompts: PromptManager,
    model_id: str,
    gen: GenerationConfig,
    repo: str,
    index: RepoIndex | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> tuple[list[AnswerWork], int]:
    """One answer item per question whose chunk is current; returns (work, stale question count).

    Themes whose answer template shows ``{repo_context}`` get the chunk's repo-wide context
    (:func:`repo_context` over ``index``, at most ``gen.repo_context_tokens`` tokens counted with
    ``count_tokens``); a hash of that context is part of the item's key, so only a change in what
    the prompt shows (a used definition's signature or docstring) regenerates the answer."""
    ordered = sorted(
        question_rows,
        key=lambda r: (
            r["path"],
            r["start_line"],
            r["chunk_key"],
            r["theme"],
            r.get("question_index") or 0,
            r["question_id"],
        ),
    )
    work: list[AnswerWork] = []
    stale = 0
    themes: dict[str, ThemeTemplate] = {}
    contexts: dict[str, RepoContext] = {}
    for row in ordered:
        chunk = chunks_by_key.get(row["chunk_key"])
        if chunk is None:
            stale += 1
            continue
        theme_name = row["theme"]
        if theme_name not in themes:
            themes[theme_name] = prompts.theme(theme_name)
        theme = themes[theme_name]
        context = RepoContext()
        if theme.uses_repo_context and index is not None and count_tokens is not None:
            if chunk.chunk_key not in contexts:
                contexts[chunk.chunk_key] = repo_context(
                    chunk.text,
                    chunk.language,
                    chunk.imports,
                    index,
                    gen.repo_context_tokens,
                    count_tokens,
                    lambda text: redact_field(text) or text,
                )
            context = contexts[chunk.chunk_key]
        params = answer_params(gen)
        if context.text:
            params = {
                **params,
                "repo_context": int(context.digest, 16) if context.digest else 0,
            }  # a number: see questions
        question = row["question"]
        key = item_key(
            "answer", theme.chunk_input(chunk, "answer"), theme.name, theme.answer_hash, model_id, params, question
        )
        item = LedgerItem(
            key, "answer", repo, chunk.chunk_key, theme.name, theme.answer_hash, model_id, params_json(params), question
        )
        work.append(
            AnswerWork(
                WorkItem(
                    item=item,
                    chunk=chunk,
                    build=theme.answer_builder(chunk, question, context.text),
                    desired_max_tokens=gen.effective_answer_max_tokens,
                    stop_when=answer_stop,
                ),
                row,
                context_files(chunk.path, context),
            )
        )
    return work, stale


@dataclass
class AnswerPlanner:
    """Plans answer items for question rows of one repository: its chunks (all of them, for the
    repo-wide context of each answer) and symbol index, prompts, model and settings."""

    chunks: Mapping[str, Chunk]
    index: RepoIndex
    prompts: PromptManager
    model_id: str
    gen: GenerationConfig
    repo: str
    count_tokens: Callable[[str], int] | None = None

    @classmethod
    def for_repo(
        cls,
        chunks: Sequence[Chunk],
        prompts: PromptManager,
        model_id: str,
        gen: GenerationConfig,
        repo: str,
        count_tokens: Callable[[str], int] | None = None,
    ) -> AnswerPlanner:
        """The planner over ``chunks`` (every chunk of the repository)."""
        index = RepoIndex.build((c.path, c.language, c.symbol, c.text) for c in chunks)
        return cls({c.chunk_key: c for c in chunks}, index, prompts, model_id, gen, repo, count_tokens)

    def plan(self, question_rows: Sequence[QuestionRow]) -> tuple[list[AnswerWork], int]:
        """:func:`plan_answers` for ``question_rows``."""
        return plan_answers(
            question_rows, self.chunks, self.prompts, self.model_id, self.gen, self.repo, self.index, self.count_tokens
        )

    def ahead(self, items: Sequence[WorkItem], entries: Mapping[str, LedgerEntry]) -> list[WorkItem]:
        """The answer items of settled question ``items`` (one chunk's), as the answers step will
        plan them from the questions table: the same rows, near-duplicates dropped per chunk."""
        table, _ = final_questions(items, entries, self.repo)
        return [a.work for a in self.plan(table.to_pylist())[0]]


def answer_postprocess(w: WorkItem, result: GenerationResult) -> Outcome:
    """An answer is ok unless it is empty."""
    text = result.text.strip()
    if not text:
        return Outcome("failed", output=result.text, error_category="parse_error", error_message="empty answer")
    return Outcome("ok", output=redact_field(text))


def answers_table(work: Sequence[AnswerWork], entries: Mapping[str, LedgerEntry], repo: str) -> pa.Table:
    """Rows for every ok answer item of ``work`` (each answer key once)."""
    rows: list[AnswerRow] = []
    seen: set[str] = set()
    for aw in work:
        key = aw.work.item.key
        entry = entries.get(key)
        if entry is None or not entry.ok or key in seen:
            continue
        seen.add(key)
        chunk, question = aw.work.chunk, aw.question
        rows.append(
            {
                "repo": repo,
                "answer_id": key,
                "question_id": question["question_id"],
                "chunk_key": chunk.chunk_key,
                "theme": entry.theme,
                "template_hash": entry.template_hash,
                "question_template_hash": question.get("template_hash") or "",
                "question": entry.input_text or question["question"],
                "question_kind": question.get("kind"),
                "context_files": aw.files or [chunk.path],
                "answer": entry.output or "",
                "model_id": entry.model_id,
                "params": entry.params_json,
                "prompt_tokens": entry.prompt_tokens,
                "cached_prompt_tokens": entry.cached_prompt_tokens,
                "completion_tokens": entry.completion_tokens,
                "latency_ms": entry.latency_ms,
                "trimmed": bool(entry.trimmed),
                "max_tokens": entry.max_tokens,
                "finish_reason": entry.finish_reason,
                "seed_sent": stored_flag(entry.seed_sent),
                **chunk_columns(chunk),
            }
        )
    return pa.Table.from_pylist(rows, schema=ANSWERS_SCHEMA)
