"""Plan many files at once: cache look-up, one batched encode for the misses, then planning."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from tokenizers import Encoding

from cicdllm_assets.chunking.cache import CacheKey, PlanCache, PlanSummary
from cicdllm_assets.chunking.plan import FilePlan, plan_file, prepare
from cicdllm_assets.llm.tokenizer_counter import TokenCounter

ENCODE_BATCH_CHARS = 16_000_000  # characters per encode call: big calls cost the least; bounds memory


@dataclass(frozen=True)
class PlanRequest:
    """One file to plan."""

    blob_sha: str
    language: str
    text: str


@dataclass
class ChunkerStats:
    """Counters for metadata and tests."""

    cache_hits: int = 0
    cache_misses: int = 0
    files_planned: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, hits: int, misses: int) -> None:
        """Count one batch."""
        with self._lock:
            self.cache_hits += hits
            self.cache_misses += misses
            self.files_planned += misses


class Chunker:
    """Token counts and chunk plans per blob, cached by (blob, language, tokenizer, budget, version)."""

    def __init__(
        self, counter: TokenCounter, budget: int, cache: PlanCache | None = None, tokenizer_source: str = ""
    ) -> None:
        if budget < 8:
            raise ValueError(f"chunk budget must be at least 8 tokens, got {budget}")
        self.counter = counter
        self.budget = budget
        self.tokenizer_source = tokenizer_source
        self.cache = cache if cache is not None else PlanCache(None, 0)
        self.stats = ChunkerStats()
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cicdllm-encode")

    def key(self, blob_sha: str, language: str) -> CacheKey:
        """The cache key of a blob under this tokenizer and budget."""
        return CacheKey(blob_sha, language, self.counter.identity, self.budget)

    def cached(self, requests: Sequence[tuple[str, str]]) -> dict[CacheKey, FilePlan]:
        """Plans already cached for (blob_sha, language) pairs; nothing is computed."""
        return self.cache.get_many([self.key(sha, lang) for sha, lang in requests])

    def summaries(self, requests: Sequence[tuple[str, str]]) -> dict[CacheKey, PlanSummary]:
        """Token and chunk counts of cached (blob_sha, language) pairs; counts hits."""
        keys = [self.key(sha, lang) for sha, lang in requests]
        found = self.cache.get_summaries(keys)
        self.stats.add(hits=sum(1 for key in keys if key in found), misses=0)
        return found

    def submit(self, requests: Sequence[PlanRequest]) -> PendingPlans:
        """Start encoding uncached requests in the background; ``result()`` plans them.

        Lets a caller read and filter the next batch of files while this one is tokenized.
        """
        keys = [self.key(r.blob_sha, r.language) for r in requests]
        found = self.cache.get_many(keys)
        todo: dict[CacheKey, PlanRequest] = {}
        for key, request in zip(keys, requests, strict=True):
            if key not in found and key not in todo:
                todo[key] = request
        self.stats.add(hits=len(requests) - len(todo), misses=len(todo))
        batches = _split_batches(list(todo.items()))
        futures: list[Future[list[Encoding]]] = [
            self._encoder.submit(self.counter.encode_batch, [r.text for _, r in batch]) for batch in batches
        ]
        return PendingPlans(self, keys, found, batches, futures)

    def plan_many(self, requests: Sequence[PlanRequest]) -> list[FilePlan]:
        """One plan per request, in order; misses are encoded in batches and cached."""
        return self.submit(requests).result()

    def close(self) -> None:
        """Stop the background encoder thread."""
        self._encoder.shutdown(wait=True)


def _split_batches(items: list[tuple[CacheKey, PlanRequest]]) -> list[list[tuple[CacheKey, PlanRequest]]]:
    batches: list[list[tuple[CacheKey, PlanRequest]]] = []
    size = 0
    for item in items:
        if not batches or size >= ENCODE_BATCH_CHARS:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += len(item[1].text)
    return batches


class PendingPlans:
    """Plans whose encodings are being computed in the background."""

    def __init__(
        self,
        chunker: Chunker,
        keys: list[CacheKey],
        found: dict[CacheKey, FilePlan],
        batches: list[list[tuple[CacheKey, PlanRequest]]],
        futures: list[Future[list[Encoding]]],
    ) -> None:
        self._chunker, self._keys, self._found = chunker, keys, found
        self._batches, self._futures = batches, futures

    def result(self) -> list[FilePlan]:
        """Wait for the encodings, plan each file (cached for next time), in request order."""
        chunker = self._chunker
        computed: dict[CacheKey, FilePlan] = {}
        for batch, future in zip(self._batches, self._futures, strict=True):
            # Token-independent work (line starts, Python lexing) runs while the batch is
            # still being encoded: the tokenizer releases the GIL.
            prepared = [prepare(request.text, request.language) for _, request in batch]
            for (key, request), encoding, ready in zip(batch, future.result(), prepared, strict=True):
                computed[key] = plan_file(
                    request.text, request.language, encoding, chunker.budget, chunker.counter.count_batch, ready
                )
        if computed:
            chunker.cache.put_many(computed.items())
            self._found.update(computed)
        return [self._found[key] for key in self._keys]
