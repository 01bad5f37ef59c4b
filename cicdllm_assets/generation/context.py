"""Fit a request into the backend's context window, by real token counts.

prompt tokens (``backend.count_prompt_tokens``, after the chat template) + max new
tokens must be <= ``backend.context_window``. The completion budget is first capped
so that the prompt keeps at least min(its full size, half the window), never less
than the prompt with an empty chunk; if the prompt still does not fit, the chunk is
trimmed by a binary search over whole lines (then characters of the first line),
each probe counted with the backend's tokenizer. If even an empty chunk leaves no
room for ``min_completion_tokens``, the item fails with ``context_overflow``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cicdllm_assets.errors import CicdllmError
from cicdllm_assets.llm.base import ChatMessage, LLMBackend
from cicdllm_assets.llm.models.paths import APPROXIMATE_BUDGET_FACTOR

TRIM_MARKER = "\n... [trimmed to fit the model's context window]"
MIN_COMPLETION_TOKENS = 16

MessageBuilder = Callable[[str], Sequence[ChatMessage]]


class ContextOverflowError(CicdllmError, ValueError):
    """Even an empty chunk does not leave room for a completion."""


@dataclass(frozen=True)
class FittedPrompt:
    """Messages that fit, the completion budget, and whether the chunk was trimmed."""

    messages: tuple[ChatMessage, ...]
    max_tokens: int
    prompt_tokens: int
    trimmed: bool
    code_chars: int


def _largest_fitting(low: int, high: int, fits: Callable[[int], bool]) -> int:
    """Largest n in [low, high] with fits(n), assuming fits is monotone and fits(low) is True."""
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def fit_prompt(
    backend: LLMBackend,
    build: MessageBuilder,
    code: str,
    desired_max_tokens: int,
    *,
    min_completion_tokens: int = MIN_COMPLETION_TOKENS,
) -> FittedPrompt:
    """Messages for ``code`` (trimmed if needed) and a completion budget that fit the window."""
    counts: dict[str, int] = {}

    def prompt_tokens(candidate: str) -> int:
        if candidate not in counts:
            counts[candidate] = backend.count_prompt_tokens(list(build(candidate)))
        return counts[candidate]

    full = prompt_tokens(code)
    window = int(backend.context_window)
    if getattr(backend, "approximate_counts", False):  # counted with another model's tokenizer
        window = int(window * APPROXIMATE_BUDGET_FACTOR)
    if full + desired_max_tokens <= window:
        return FittedPrompt(tuple(build(code)), desired_max_tokens, full, False, len(code))
    empty = prompt_tokens("")
    if empty + min_completion_tokens > window:
        raise ContextOverflowError(
            f"the prompt without any code takes {empty} tokens; with {min_completion_tokens} completion"
            f" tokens it exceeds the context window of {window}"
        )
    reserve = max(empty, min(full, window // 2))
    max_tokens = max(min_completion_tokens, min(desired_max_tokens, window - reserve))
    if full + max_tokens <= window:
        return FittedPrompt(tuple(build(code)), max_tokens, full, False, len(code))
    budget = window - max_tokens

    lines = code.split("\n")

    def candidate_lines(n: int) -> str:
        return "\n".join(lines[:n]) + TRIM_MARKER if n else TRIM_MARKER.lstrip("\n")

    kept = _largest_fitting(0, len(lines) - 1, lambda n: prompt_tokens(candidate_lines(n)) <= budget)
    trimmed = candidate_lines(kept)
    if kept == 0:
        first = lines[0]

        def candidate_chars(n: int) -> str:
            return first[:n] + TRIM_MARKER

        chars = _largest_fitting(0, len(first), lambda n: prompt_tokens(candidate_chars(n)) <= budget)
        trimmed = candidate_chars(chars)
        if prompt_tokens(trimmed) > budget:
            trimmed = ""
    tokens = prompt_tokens(trimmed)
    if tokens + max_tokens > window:  # only possible if the tokenizer is not monotone in length
        trimmed, tokens = "", empty
    return FittedPrompt(tuple(build(trimmed)), max_tokens, tokens, True, len(trimmed))
