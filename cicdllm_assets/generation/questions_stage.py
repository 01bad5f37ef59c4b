"""The question stage: plan question items per chunk and theme, parse replies, tabulate questions."""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

import pyarrow as pa

from cicdllm_assets.config.models import GenerationConfig
from cicdllm_assets.generation.chunks import Chunk
from cicdllm_assets.generation.engine import Postprocess, WorkItem
from cicdllm_assets.generation.kinds import KINDS_VERSION, examples_text, plan_kinds
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
from cicdllm_assets.generation.stopping import question_stop
from cicdllm_assets.generation.symbols import chunk_symbols
from cicdllm_assets.llm.base import (
    GenerationResult,
)
from cicdllm_assets.quality.secrets import redact_field
from cicdllm_assets.quality.variety import drop_near_duplicate_questions
from cicdllm_assets.storage.contract import QUESTIONS_SCHEMA, QuestionRow

_BUILTINS = frozenset(dir(builtins))


def example_names(chunk: Chunk) -> dict[str, list[str]]:
    """The chunk's real names the example questions use: ``s`` its symbol, ``p`` parameters,
    ``c`` names it calls, ``e`` exceptions it raises (:func:`chunk_symbols`)."""
    symbols = chunk_symbols(chunk.text, chunk.language or "")
    symbol = chunk.symbol.split(",")[0].strip() or PurePosixPath(chunk.path).name
    return {
        "s": [symbol],
        "p": [p for p in symbols.params if len(p) > 1][:4],
        "c": [c for c in symbols.calls if len(c) > 2 and c not in _BUILTINS and c != symbol.rsplit(".", 1)[-1]][:4],
        "e": list(symbols.raises[:2]),
    }


def plan_questions(
    chunks: Sequence[Chunk], themes: Sequence[ThemeTemplate], model_id: str, gen: GenerationConfig, repo: str
) -> list[WorkItem]:
    """One question item per chunk x theme, in chunk order (themes of a chunk together).

    For themes whose template shows ``{examples}``, the chunk's question kinds are planned across
    its themes (:func:`plan_kinds`, seeded by the chunk's code) and one example question per slot
    is rendered from the chunk's names; the kinds and a hash of the rendered examples are part of
    the item's key (its params), like everything else the prompt shows. Other themes get no kinds."""
    work = []
    for chunk in chunks:
        kinds = plan_kinds(chunk.text, [t.name for t in themes if t.uses_examples], gen.questions_per_chunk)
        names = example_names(chunk) if kinds else {}
        for theme in themes:
            planned = kinds.get(theme.name, ())
            params = question_params(gen)
            examples = ""
            if planned:
                examples = examples_text(planned, chunk.text, names)
                examples_hash = hashlib.sha256(examples.encode("utf-8")).hexdigest()[:16]
                # hashes as numbers: a quoted hex string in the exported params would read as a secret
                params = {
                    **params,
                    "question_kinds": int(KINDS_VERSION, 16),
                    "kinds": list(planned),
                    "examples": int(examples_hash, 16),
                }
            pjson = params_json(params)
            key = item_key(
                "question", theme.chunk_input(chunk, "question"), theme.name, theme.question_hash, model_id, params
            )
            item = LedgerItem(key, "question", repo, chunk.chunk_key, theme.name, theme.question_hash, model_id, pjson)
            work.append(
                WorkItem(
                    item=item,
                    chunk=chunk,
                    build=theme.question_builder(chunk, gen.questions_per_chunk, examples),
                    desired_max_tokens=gen.question_max_tokens,
                    n_questions=gen.questions_per_chunk,
                    kinds=planned,
                    stop_when=question_stop(gen.questions_per_chunk, gen.min_question_chars),
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
                    "kind": w.kinds[index] if index < len(w.kinds) else None,
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


def final_questions(work: Sequence[WorkItem], entries: Mapping[str, LedgerEntry], repo: str) -> tuple[pa.Table, int]:
    """The questions table of ``work`` as the asset stores it: each chunk's near-duplicate
    questions dropped (:func:`drop_near_duplicate_questions`); and how many were."""
    return drop_near_duplicate_questions(questions_table(work, entries, repo))
