"""Row helpers shared by the question and answer stages: params, ids, provenance columns."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from cicdllm_assets.config.models import GenerationConfig
from cicdllm_assets.generation.chunks import Chunk
from cicdllm_assets.generation.prompts import ThemeTemplate
from cicdllm_assets.storage.contract import ChunkProvenance


def sampling_params(gen: GenerationConfig) -> dict[str, Any]:
    """Sampling params shared by question and answer items (keys are hashed sorted: order is free)."""
    return {"temperature": gen.temperature, "top_p": gen.top_p, "seed": gen.seed}


def question_params(gen: GenerationConfig) -> dict[str, Any]:
    """Generation params that shape a question item (part of its key)."""
    return {
        "max_tokens": gen.question_max_tokens,
        "n_questions": gen.questions_per_chunk,
        **sampling_params(gen),
    }


def answer_params(gen: GenerationConfig) -> dict[str, Any]:
    """Generation params that shape an answer item (part of its key)."""
    return {"max_tokens": gen.effective_answer_max_tokens, **sampling_params(gen)}


def stored_flag(value: int | None) -> bool | None:
    """A nullable ledger flag (0/1/NULL) as a row value."""
    return None if value is None else bool(value)


def chunk_columns(chunk: Chunk) -> ChunkProvenance:
    """The provenance columns every generated row copies from its code chunk."""
    return {
        "path": chunk.path,
        "start_line": chunk.start_line,
        "end_line": chunk.end_line,
        "commit": chunk.commit,
        "license": chunk.license,
        "language": chunk.language,
    }


def content_id(*parts: str) -> str:
    """A stable id from content parts."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def data_version_of(ids: Iterable[str]) -> str:
    """A data version for an output table: hash of its sorted row ids."""
    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()[:24]


# ---------------------------------------------------------------------------- questions


def template_hashes(themes: Iterable[ThemeTemplate]) -> dict[str, dict[str, str]]:
    """``{theme: {question: hash, answer: hash}}`` for metadata."""
    return {t.name: {"question": t.question_hash, "answer": t.answer_hash} for t in themes}
