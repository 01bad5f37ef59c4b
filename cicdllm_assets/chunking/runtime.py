"""Process-wide tokenizer and plan-cache instances, so the LRU survives across partitions."""

from __future__ import annotations

import threading
from pathlib import Path

from cicdllm_assets.chunking.cache import PlanCache
from cicdllm_assets.chunking.service import Chunker
from cicdllm_assets.config import ModelPaths
from cicdllm_assets.errors import TOKENIZER, CicdllmError
from cicdllm_assets.llm.models.paths import ModelNotPreparedError, resolve_tokenizer
from cicdllm_assets.llm.tokenizer_counter import TokenCounter
from cicdllm_assets.storage.state import StateStore

_lock = threading.Lock()
_counters: dict[tuple[str, int, int], TokenCounter] = {}
_caches: dict[tuple[str, int], PlanCache] = {}


def token_counter(path: Path) -> TokenCounter:
    """A shared :class:`TokenCounter` per tokenizer file (reloaded when the file changes)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _lock:
        counter = _counters.get(key)
        if counter is None:
            counter = TokenCounter(path)
            _counters[key] = counter
        return counter


def plan_cache(state: str | Path, lru_size: int) -> PlanCache:
    """A shared :class:`PlanCache` per state database and LRU size."""
    key = (str(state if isinstance(state, str) else Path(state).resolve()), lru_size)
    with _lock:
        cache = _caches.get(key)
        if cache is None:
            cache = PlanCache(StateStore(state), lru_size)
            _caches[key] = cache
        return cache


def chunker_for(models: ModelPaths, state_target: str | Path, *, chunk_max_tokens: int, cache_size: int) -> Chunker:
    """A :class:`Chunker` for the configured tokenizer, ``processing.chunk_max_tokens`` budget and
    the plan cache in ``state_target`` (``performance.cache_size`` LRU entries); close it after use."""
    choice = resolve_tokenizer(models)
    counter = token_counter(choice.path)
    cache = plan_cache(state_target, cache_size)
    return Chunker(counter, choice.budget(chunk_max_tokens), cache, choice.source)


class TokenizerUnavailableError(CicdllmError, category=TOKENIZER, permanent=True):
    """The configured tokenizer is missing or unusable: a ``tokenizer`` failure no retry fixes."""


def step_chunker(models: ModelPaths, state_target: str | Path, *, chunk_max_tokens: int, cache_size: int) -> Chunker:
    """:func:`chunker_for` inside a pipeline step: a missing or unusable tokenizer raises
    :class:`TokenizerUnavailableError`."""
    try:
        return chunker_for(models, state_target, chunk_max_tokens=chunk_max_tokens, cache_size=cache_size)
    except (ModelNotPreparedError, ValueError) as exc:
        raise TokenizerUnavailableError(str(exc)) from None
