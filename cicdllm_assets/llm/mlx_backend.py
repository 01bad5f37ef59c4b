"""In-process mlx-lm backend: continuous batching and shared-prefix KV caches.

* Requests run through mlx_lm's :class:`~mlx_lm.generate.BatchGenerator` with up to
  ``batch_size`` sequences decoding together (finished sequences are replaced by
  waiting ones), which on a CPU multiplies aggregate tokens/s. ``batch_size="auto"``
  picks the width per call from the model's size, the requests' lengths and the free
  memory (:mod:`cicdllm_assets.llm.batch_width`).
* Requests whose first ``prefix_messages`` messages are equal share a prefix (system
  prompt + code chunk). The prefix is prefilled once into a KV cache and every
  request of the group starts from it (BatchGenerator copies caches when it merges
  them into a batch), so only each request's own suffix is processed. The prefixes of
  up to :data:`PREFIX_PREFILL_WIDTH` short groups are prefilled together in one padded
  batch (:func:`prefix_group`). Prefix caches are kept in a small LRU bounded by bytes, so
  the answers for a chunk can reuse the prefix its questions built earlier in the same process.
  Requests of one call without ``prefix_messages`` whose prompts all start with the same
  tokens (the chat template's default system prompt) share those tokens the same way.
* Each request gets its own sampler with its own PRNG key derived from its seed, so
  results do not depend on what else is in the batch.
* Models are loaded once per process and cached by path (:func:`load_model`);
  :func:`release_models` drops them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cicdllm_assets.llm.base import (
    STOP_CHECK_TOKENS,
    ChatMessage,
    GenerationRequest,
    GenerationResult,
    RequestFailure,
    RequestFeed,
)
from cicdllm_assets.llm.batch_width import (
    ModelShape,
    WidthChoice,
    available_memory,
    choose_width,
    model_shape,
)
from cicdllm_assets.llm.cpu_kernels import inference_kernels, use_cpu_kernels
from cicdllm_assets.llm.openblas import ensure_openblas

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT_WINDOW = 2048
NOMINAL_SEQUENCE_TOKENS = 1024
"""Sequence length :attr:`MLXBackend.preferred_batch` sizes the automatic width for."""
PREFIX_CACHE_BYTES = 512 * 1024 * 1024
"""Upper bound of the memory the prefix LRU may hold (all models together)."""
PREFIX_PREFILL_WIDTH = 8
"""Most shared prefixes (system + chunk) prefilled together in one batch (see :func:`prefix_group`)."""
PREFIX_BATCH_TOKENS = 512
"""Most padded tokens (prefixes x the longest) of one prefix prefill batch (see :func:`prefix_group`)."""
PREFILL_STEP = 512
"""Prompt tokens per forward pass during prefill."""
PREFILL_PADDING = 1.25
"""Requests entering a batch together are prefilled in groups of similar prompt (suffix)
lengths, longest first: a group grows while its padded tokens stay within this factor of its
real ones (one group of 28 answers padded 4,400 tokens to 7,028), and each group starts decoding
while the next one is prefilled."""
PREFILL_GROUP_TOKENS = 1024
"""Real prompt tokens a prefill group holds at least (the rest, if fewer) whatever its padding:
smaller groups cost more in forward passes and narrow decoding steps than padding saves."""
MIN_SUFFIX_TOKENS = 2
"""Prompt tokens a request keeps after its shared prefix (BatchGenerator needs a non-empty prompt)."""
SHARED_PREFIX_MIN = 16
"""Fewest leading tokens the prompts of requests without ``prefix_messages`` must all share
for those tokens to be prefilled once as their common prefix."""


# --------------------------------------------------------------------------------------
# Model cache: one load per model path per process.


@dataclass
class LoadedModel:
    """A model and its tokenizer as mlx_lm.load returned them."""

    path: str
    model: Any
    tokenizer: Any
    config: dict[str, Any]


_models: dict[str, LoadedModel] = {}
_tokenizers: dict[str, Any] = {}
_models_lock = threading.Lock()
load_count = 0
"""How many times a model was actually loaded in this process (for tests/diagnostics)."""


def load_model(path: str, *, dequantize: bool = True) -> LoadedModel:
    """Load ``path`` (a local model directory or hub id) once per process; cached by path."""
    global load_count
    with _models_lock:
        cached = _models.get(path)
        if cached is not None:
            return cached
        entry = load_fresh_model(path, dequantize=dequantize)
        _models[path] = entry
        load_count += 1
        return entry


def load_fresh_model(path: str, *, dequantize: bool = True) -> LoadedModel:
    """Load ``path`` without the per-process cache: a private copy the caller may modify
    (LoRA training replaces its linear layers). Same loading path as :func:`load_model`."""
    ensure_openblas()
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.utils import dequantize_model

    logger.info("loading model %s", path)
    try:
        loaded: Any = load(path)
    except Exception as exc:  # a hub id that could not be downloaded: say what to run
        if Path(path).exists():
            raise
        from cicdllm_assets.llm.models.paths import ModelNotPreparedError, missing_hub_model_message

        raise ModelNotPreparedError(f"{missing_hub_model_message(path)} ({type(exc).__name__}: {exc})") from None
    model, tokenizer = loaded[0], loaded[1]
    if dequantize and mx.default_device() == mx.cpu and _is_quantized(model):
        # mlx's quantized matmul is not vectorised on the CPU backend.
        model = dequantize_model(model)
        mx.eval(model.parameters())
    use_cpu_kernels(model)
    return LoadedModel(path=path, model=model, tokenizer=tokenizer, config=_read_config(Path(path)))


def load_tokenizer(path: str) -> Any:
    """Only the tokenizer of ``path`` (mlx_lm's TokenizerWrapper), cached by path.

    Token counting does not need the weights; a loaded model's own tokenizer is used
    when there is one.
    """
    with _models_lock:
        if path in _models:
            return _models[path].tokenizer
        cached = _tokenizers.get(path)
        if cached is not None:
            return cached
        ensure_openblas()
        from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

        config = _read_config(Path(path))
        tokenizer = mlx_load_tokenizer(Path(path), eos_token_ids=config.get("eos_token_id"))
        _tokenizers[path] = tokenizer
        return tokenizer


def release_models(path: str | None = None) -> None:
    """Drop cached models and tokenizers (all, or those of ``path``) and their prefix caches."""
    with _models_lock:
        paths = [path] if path is not None else list({*_models, *_tokenizers})
        for key in paths:
            _models.pop(key, None)
            _tokenizers.pop(key, None)
        _prefix_cache.drop(lambda k: k[0] in paths)
    try:
        import sys

        if "mlx.core" in sys.modules:
            sys.modules["mlx.core"].clear_cache()
    except Exception:  # noqa: S110 - freeing the allocator cache is best effort
        pass


def _is_quantized(model: Any) -> bool:
    import mlx.nn as nn

    return any(isinstance(m, nn.QuantizedLinear | nn.QuantizedEmbedding) for _, m in model.named_modules())


def _read_config(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        return {}
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------------------
# Prefix KV caches.


class _PrefixLRU:
    """(model path, prefix tokens) -> prefilled KV cache, evicting the oldest past a byte budget."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, tuple[int, ...]], tuple[list[Any], int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, tuple[int, ...]]) -> list[Any] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: tuple[str, tuple[int, ...]], cache: list[Any]) -> None:
        size = sum(int(getattr(c, "nbytes", 0)) for c in cache)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (cache, size)
            self._bytes += size
            while self._bytes > self.max_bytes and self._entries:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted

    def longest_prefix(self, model: str, tokens: tuple[int, ...]) -> tuple[tuple[int, ...], list[Any]] | None:
        """The longest stored prefix of ``tokens`` (shorter than it) for ``model``, with its cache."""
        with self._lock:
            best: tuple[tuple[int, ...], list[Any]] | None = None
            for (path, prefix), (cache, _) in self._entries.items():
                if path != model or len(prefix) >= len(tokens) or (best is not None and len(prefix) <= len(best[0])):
                    continue
                if tokens[: len(prefix)] == prefix:
                    best = (prefix, cache)
            if best is not None:
                self._entries.move_to_end((model, best[0]))
            return best

    def drop(self, predicate: Callable[[tuple[str, tuple[int, ...]]], bool]) -> None:
        with self._lock:
            for key in [k for k in self._entries if predicate(k)]:
                self._bytes -= self._entries.pop(key)[1]


_prefix_cache = _PrefixLRU(PREFIX_CACHE_BYTES)


# --------------------------------------------------------------------------------------
# Sampling.


def _greedy(logprobs: Any) -> Any:
    import mlx.core as mx

    return mx.argmax(logprobs, axis=-1)


TOP_P_CANDIDATES = 1024
"""Most likely tokens sorted first when looking for the top-p set (all are sorted when
these few hold less than ``top_p`` of the mass)."""


class TopPSampler:
    """Top-p sampling at a temperature with its own seeded generator, computed in numpy.

    mlx's CPU backend takes milliseconds per row for a full-vocabulary sort, exp and
    categorical draw; numpy does the same row in a fraction of one (the profile of a
    ``cicdllm run`` at temperature 0.3 had per-row sampling as the largest cost). The
    nucleus is the one :func:`mlx_lm.sample_utils.apply_top_p` keeps (tokens whose
    log-probability is at least that of the smallest prefix of the sorted distribution
    holding ``top_p`` of the mass; sums in float64 here, so a boundary token may differ
    by float rounding), and a token is drawn from it with probabilities proportional to
    ``exp(logprob / temperature)``.
    """

    def __init__(self, temperature: float, top_p: float, seed: int) -> None:
        import numpy as np

        self.temperature = temperature
        self.top_p = top_p if 0.0 < top_p < 1.0 else 1.0
        self.rng = np.random.default_rng(seed & 0xFFFFFFFF)

    def __call__(self, logprobs: Any) -> Any:
        import mlx.core as mx
        import numpy as np

        rows = np.asarray(logprobs.astype(mx.float32), dtype=np.float64).reshape(-1, logprobs.shape[-1])
        return mx.array([self.sample_row(row) for row in rows], dtype=mx.uint32)

    def nucleus(self, row: Any) -> tuple[Any, Any]:
        """(token ids, log-probabilities) of the top-p set of one row, ascending."""
        import numpy as np

        size = row.shape[0]
        k = min(TOP_P_CANDIDATES, size)
        idx = np.argpartition(row, size - k)[size - k :] if k < size else np.arange(size)
        probs = np.exp(row)
        total = probs.sum()
        if k < size and probs[idx].sum() < self.top_p * total:
            idx = np.arange(size)  # a flat distribution: the nucleus reaches past the candidates
        order = np.argsort(row[idx], kind="stable")
        idx = idx[order]
        values = row[idx]
        above = np.cumsum(probs[idx][::-1])[::-1] - probs[idx]  # mass strictly above each position
        dropped = int((above >= self.top_p * total).sum())  # a prefix: ``above`` falls along idx
        threshold = values[dropped]
        keep = values >= threshold
        return idx[keep], values[keep]

    def sample_row(self, row: Any) -> int:
        """One token id from one row of log-probabilities."""
        import numpy as np

        idx, values = self.nucleus(row)
        weights = np.exp((values - values[-1]) / self.temperature)
        cumulative = np.cumsum(weights)
        pick = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
        return int(idx[min(pick, len(idx) - 1)])


def make_request_sampler(temperature: float, top_p: float, seed: int) -> Callable[[Any], Any]:
    """A sampler with its own seeded generator: greedy at temperature 0, else :class:`TopPSampler`."""
    if temperature <= 0:
        return _greedy  # one shared object: BatchGenerator then samples the whole batch in one call
    return TopPSampler(temperature, top_p, seed)


# --------------------------------------------------------------------------------------
# The backend.


@dataclass
class _Prepared:
    """A request after tokenization."""

    index: int
    request: GenerationRequest
    tokens: list[int]
    prefix_len: int
    max_tokens: int
    group: tuple[int, ...] = ()
    base: tuple[int, ...] = ()
    """The prefix ``group`` extends (:func:`nest_prefixes`); empty when it extends none."""


@dataclass
class _InFlight:
    prepared: _Prepared
    started: float
    cached: int
    tokens: list[int] = field(default_factory=list)


@dataclass
class _Prefixes:
    """Prefix caches of one ``generate`` call: ready ones (held until the group's last
    request is queued), groups prefilled by this call, and groups whose prefill a request
    already paid for."""

    remaining: Counter[tuple[int, ...]]
    ready: dict[tuple[int, ...], list[Any]] = field(default_factory=dict)
    fresh: Counter[tuple[int, ...]] = field(default_factory=Counter)
    """Prefix tokens this call prefilled for each group (its base's too, when prefilled for it)."""
    paid: set[tuple[int, ...]] = field(default_factory=set)


@dataclass
class BackendStats:
    """Cumulative work counters of one backend."""

    prompt_tokens: int = 0
    """Prompt tokens of all requests (what they would cost without reuse)."""
    processed_prompt_tokens: int = 0
    """Prompt tokens actually run through the model (prefix prefills + suffixes)."""
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    failures: int = 0
    prefix_prefill_tokens: int = 0
    """Of ``processed_prompt_tokens``: shared prefixes prefilled into prefix caches."""
    batch_prefill_tokens: int = 0
    """Prompt tokens mlx_lm's BatchGenerator reports it prefilled (each request's suffix
    minus its last token, which goes in with the first decoding step)."""
    prefix_prefill_batches: int = 0
    """Batched forward passes that prefilled shared prefixes (several prefixes each)."""


class MLXBackend:
    """:class:`~cicdllm_assets.llm.base.LLMBackend` running mlx-lm in process."""

    def __init__(
        self,
        model_path: str,
        *,
        batch_size: int | Literal["auto"] = "auto",
        context_window: int | None = None,
        max_kv_size: int | None = None,
        prefix_reuse: bool = True,
        dequantize: bool = True,
        model_id: str | None = None,
    ) -> None:
        if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be an integer >= 1 or 'auto', got {batch_size!r}")
        self.model_path = model_path
        self.batch_size = batch_size
        self.max_kv_size = max_kv_size
        self.prefix_reuse = prefix_reuse
        self.dequantize = dequantize
        self._context_window = context_window
        self._model_id = model_id
        self._loaded: LoadedModel | None = None
        self._shape: ModelShape | None = None
        self._lock = threading.Lock()
        self.stats = BackendStats()
        self.last_width: WidthChoice | None = None
        """How the last automatic width was chosen (None with a fixed ``batch_size``)."""

    # -- identity and sizes -------------------------------------------------------------

    @property
    def model_id(self) -> str:
        """``mlx:<name>@<fingerprint>`` where the fingerprint hashes config/weights identity."""
        if self._model_id is None:
            self._model_id = _model_fingerprint(self.model_path)
        return self._model_id

    @property
    def context_window(self) -> int:
        """``llm.context_window`` if set, else config.json ``max_position_embeddings``."""
        if self._context_window is not None:
            return self._context_window
        config = self._loaded.config if self._loaded else _read_config(Path(self.model_path))
        value = config.get("max_position_embeddings") or config.get("max_sequence_length")
        self._context_window = int(value) if isinstance(value, int) and value > 0 else DEFAULT_CONTEXT_WINDOW
        return self._context_window

    @property
    def loaded(self) -> LoadedModel:
        """The model, loaded on first use (once per process for this path)."""
        if self._loaded is None:
            self._loaded = load_model(self.model_path, dequantize=self.dequantize)
        return self._loaded

    def width_for(self, sequence_tokens: int) -> int:
        """Sequences decoded together when each holds up to ``sequence_tokens`` tokens."""
        if self.batch_size != "auto":
            return self.batch_size
        if self._shape is None:
            self._shape = model_shape(self.loaded.model, self.loaded.config)
        choice = choose_width(self._shape, sequence_tokens, available_memory())
        if choice != self.last_width:
            logger.info("%s: %s", Path(self.model_path).name, choice.describe())
        self.last_width = choice
        return choice.width

    @property
    def preferred_batch(self) -> int:
        """The width for full-context sequences (the engine sizes its request groups by it)."""
        if self.batch_size != "auto":
            return self.batch_size
        return self.width_for(min(self.context_window, NOMINAL_SEQUENCE_TOKENS))

    # -- tokens -------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer; loading it does not load the weights."""
        if self._loaded is not None:
            return self._loaded.tokenizer
        return load_tokenizer(self.model_path)

    def _template(self, messages: Sequence[ChatMessage], generation_prompt: bool) -> list[int]:
        tokenizer = self.tokenizer
        ids = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=generation_prompt,
            tokenize=True,
        )
        if isinstance(ids, dict):  # transformers may return a BatchEncoding
            ids = ids["input_ids"]
        return [int(t) for t in ids]

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of the chat-templated prompt including the assistant header."""
        return len(self._template(messages, True))

    def count_tokens(self, text: str) -> int:
        """Tokens of plain text (no special tokens)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    # -- generation ---------------------------------------------------------------------

    def _prepare(self, index: int, request: GenerationRequest) -> _Prepared | GenerationResult:
        if not request.messages:
            return _error(request, "backend_error", "request has no messages", retryable=False)
        tokens = self._template(request.messages, True)
        room = self.context_window - len(tokens)
        if room < 1:
            return _error(
                request,
                "context_overflow",
                f"prompt is {len(tokens)} tokens; the context window is {self.context_window}",
                retryable=False,
                prompt_tokens=len(tokens),
            )
        prefix_len = 0
        if self.prefix_reuse and 0 < request.prefix_messages < len(request.messages):
            prefix = self._template(request.messages[: request.prefix_messages], False)
            prefix_len = _common_prefix(prefix, tokens)
            prefix_len = min(prefix_len, len(tokens) - MIN_SUFFIX_TOKENS)
            if prefix_len < 1:
                prefix_len = 0
        max_tokens = max(1, min(request.max_tokens, room))
        return _Prepared(
            index=index,
            request=request,
            tokens=tokens,
            prefix_len=prefix_len,
            max_tokens=max_tokens,
            group=tuple(tokens[:prefix_len]),
        )

    def _prefill_prefixes(
        self, prefixes: Sequence[tuple[int, ...]], processed: Counter[tuple[int, ...]] | None = None
    ) -> dict[tuple[int, ...], list[Any]]:
        """KV caches holding each of ``prefixes``: from the LRU, else prefilled together in one
        right-padded batch (mlx_lm's PromptProcessingBatch) and stored in the LRU. A prefix that
        extends a stored one is prefilled from a copy of that cache (only its own tokens are
        processed); ``processed`` counts the tokens prefilled for each."""
        found: dict[tuple[int, ...], list[Any]] = {}
        fresh: list[tuple[int, ...]] = []
        extended: list[tuple[tuple[int, ...], tuple[int, ...], list[Any]]] = []
        for prefix in dict.fromkeys(prefixes):
            cached, base = self._stored(prefix)
            if cached is not None:
                found[prefix] = cached
                continue
            if base is None:
                fresh.append(prefix)
            else:
                extended.append((prefix, *base))
        if fresh:
            found.update(self._prefill_batch(fresh, [None] * len(fresh), processed))
        if extended:
            bases = [(len(base), cache) for _, base, cache in extended]
            found.update(self._prefill_batch([prefix for prefix, _, _ in extended], bases, processed))
        return found

    def _prefill_batch(
        self,
        prefixes: Sequence[tuple[int, ...]],
        bases: Sequence[tuple[int, list[Any]] | None],
        processed: Counter[tuple[int, ...]] | None,
    ) -> dict[tuple[int, ...], list[Any]]:
        """Prefill ``prefixes`` in one batch, each after its base (its first tokens, already in a
        cache) or from an empty cache; store each in the LRU."""
        from mlx_lm.generate import PromptProcessingBatch
        from mlx_lm.models.cache import make_prompt_cache

        model = self.loaded.model
        batch = PromptProcessingBatch(
            model,
            uids=list(range(len(prefixes))),
            caches=[make_prompt_cache(model, self.max_kv_size) if b is None else b[1] for b in bases],
            prefill_step_size=PREFILL_STEP,
        )
        starts = [0 if b is None else b[0] for b in bases]
        with inference_kernels():
            batch.prompt([list(prefix[start:]) for prefix, start in zip(prefixes, starts, strict=True)])
        found = {}
        for i, (prefix, start) in enumerate(zip(prefixes, starts, strict=True)):
            cache = batch.extract_cache(i)
            found[prefix] = cache
            _prefix_cache.put((self.model_path, prefix), cache)
            self.stats.processed_prompt_tokens += len(prefix) - start
            self.stats.prefix_prefill_tokens += len(prefix) - start
            if processed is not None:
                processed[prefix] += len(prefix) - start
        self.stats.prefix_prefill_batches += 1
        return found

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[GenerationResult]:
        """Run ``requests`` in continuous batches of ``batch_size``; yield each result as it ends.

        Given a :class:`~cicdllm_assets.llm.base.RequestFeed`, requests added to it while the
        results stream join the running batch (taken between decoding steps)."""
        feed = RequestFeed.of(requests)
        if not len(feed):
            return
        with self._lock:
            yield from self._generate(feed)

    def _generate(self, feed: RequestFeed) -> Iterator[GenerationResult]:
        try:
            loaded = self.loaded
        except Exception as exc:  # the model itself is unusable: every request fails the same way
            logger.exception("cannot load model %s", self.model_path)
            for request in feed:
                self.stats.failures += 1
                yield _error(request, "backend_error", f"cannot load model {self.model_path}: {exc}")
            return

        waiting: list[_Prepared] = []
        yield from self._admit(feed, waiting)
        if self.prefix_reuse:
            _share_common_prefix(waiting)
        # Requests of one prefix group (and groups nested on one base) run next to each other so
        # the prefix is live once.
        order = {g: i for i, g in reversed(list(enumerate(g for p in waiting for g in (p.base or p.group, p.group))))}
        waiting.sort(key=lambda p: (order[p.base or p.group], order[p.group], p.index))
        width = self.width_for(max((len(p.tokens) + p.max_tokens for p in waiting), default=1))
        prefixes = _Prefixes(remaining=Counter(p.group for p in waiting if p.prefix_len > 0))
        while waiting:
            # A failure inside the batch loop fails only the requests in flight;
            # the rest get a fresh generator.
            yield from self._run(loaded, feed, waiting, width, prefixes)
            yield from self._admit(feed, waiting, prefixes)

    def _admit(
        self, feed: RequestFeed, waiting: list[_Prepared], prefixes: _Prefixes | None = None
    ) -> Iterator[GenerationResult]:
        """Tokenize the requests ``feed`` holds now onto ``waiting`` (counted in ``prefixes``'
        groups); yield a failure for each that cannot run."""
        admitted: list[_Prepared] = []
        for request in feed.take():
            try:
                prepared = self._prepare(len(waiting) + len(admitted), request)
            except Exception as exc:  # tokenizer/template failure for this request only
                prepared = _error(request, "backend_error", f"cannot build prompt: {exc}", retryable=False)
            if isinstance(prepared, GenerationResult):
                self.stats.failures += 1
                yield prepared
                continue
            admitted.append(prepared)
        if self.prefix_reuse:
            nest_prefixes(admitted)
        waiting += admitted
        if prefixes is not None:
            prefixes.remaining.update(p.group for p in admitted if p.prefix_len > 0)

    def _run(
        self,
        loaded: LoadedModel,
        feed: RequestFeed,
        waiting: list[_Prepared],
        width: int,
        prefixes: _Prefixes,
    ) -> Iterator[GenerationResult]:
        from mlx_lm.generate import BatchGenerator

        tokenizer = loaded.tokenizer
        in_flight: dict[int, _InFlight] = {}
        generator: Any = None
        try:
            eos = sorted(int(t) for t in tokenizer.eos_token_ids)
            generator = BatchGenerator(
                loaded.model,
                stop_tokens=[[t] for t in eos],
                completion_batch_size=width,
                prefill_batch_size=width,
                prefill_step_size=PREFILL_STEP,
                max_kv_size=self.max_kv_size,
            )
            with generator.stats() as batch_stats:
                while True:
                    yield from self._admit(feed, waiting, prefixes)  # requests added meanwhile
                    if not (waiting or in_flight):
                        break
                    if waiting and len(in_flight) < width:
                        self._prefill_for(waiting, width - len(in_flight), prefixes)
                    entering = sorted(waiting[: width - len(in_flight)], key=_suffix_len, reverse=True)
                    # One group of similar lengths now; the rest enters at the next steps.
                    group = prefill_group([_suffix_len(p) for p in entering])
                    del waiting[: len(entering)]
                    waiting[:0] = entering[group:]
                    for prepared in entering[:group]:
                        try:
                            uid, cached = self._insert(generator, prepared, prefixes)
                        except Exception as exc:  # this request's prefix/prompt could not be queued
                            logger.exception("cannot queue request %s", prepared.request.key)
                            self.stats.failures += 1
                            yield _error(prepared.request, "backend_error", f"cannot queue request: {exc}")
                            continue
                        in_flight[uid] = _InFlight(prepared=prepared, started=time.perf_counter(), cached=cached)
                    with inference_kernels():
                        responses = generator.next_generated() if in_flight else []
                    if in_flight and not responses:
                        raise RuntimeError("BatchGenerator stopped with requests still in flight")
                    for response in responses:
                        flight = in_flight.get(response.uid)
                        if flight is None:
                            continue
                        if response.finish_reason != "stop":
                            flight.tokens.append(int(response.token))
                        finish = response.finish_reason or self._early_finish(tokenizer, flight)
                        if finish is not None:
                            if response.finish_reason is None:  # ended by its stop check: free the slot
                                generator.remove([response.uid])
                            del in_flight[response.uid]
                            yield self._result(tokenizer, flight, finish)
            self.stats.batch_prefill_tokens += batch_stats.prompt_tokens
        except Exception as exc:  # mlx/mlx_lm failure mid-batch: fail what is in flight, keep going
            logger.exception("mlx generation failed; failing %d in-flight requests", len(in_flight))
            failed = list(in_flight.values())
            if generator is None or not failed:  # nothing ran (or can): fail what waits, not retry forever
                failed += [_InFlight(prepared=p, started=0.0, cached=0) for p in waiting]
                waiting.clear()
            for flight in failed:
                self.stats.failures += 1
                yield _error(flight.prepared.request, "backend_error", f"mlx generation failed: {exc}")
        finally:
            if generator is not None:
                generator.close()

    def _prefill_for(self, waiting: Sequence[_Prepared], slots: int, prefixes: _Prefixes) -> None:
        """Make the prefix caches of the next ``slots`` waiting requests ready, prefilling the
        missing ones (and the next groups' too, up to a multiple of :data:`PREFIX_PREFILL_WIDTH`
        groups: they are needed next, and the tokens they all start with are found once) in
        batches of :func:`prefix_group`. Shared tokens go first, once: those every new prefix
        starts with (the system prompt), then the bases of nested prefixes."""
        needed: list[tuple[int, ...]] = []
        base_of: dict[tuple[int, ...], tuple[int, ...]] = {}
        for position, prepared in enumerate(waiting):
            group = prepared.group
            if prepared.prefix_len == 0 or group in prefixes.ready or group in needed:
                continue
            if position >= slots and len(needed) % PREFIX_PREFILL_WIDTH == 0:
                break  # every request that goes in now is covered, and the next groups' up to a multiple of 8
            needed.append(group)
            if prepared.base and _prefix_cache.get((self.model_path, group)) is None:
                base_of[group] = prepared.base
        bases = [b for b in dict.fromkeys(base_of.values()) if _prefix_cache.get((self.model_path, b)) is None]
        unseen = [
            p
            for p in dict.fromkeys([*bases, *(g for g in needed if g not in base_of)])
            if self._stored(p) == (None, None)
        ]
        root = _shared_start(unseen)
        for level in ([root] if root else [], bases):
            for batch in self._prefix_batches(level):
                processed: Counter[tuple[int, ...]] = Counter()
                self._prefill_prefixes(batch, processed)
                for prefix, tokens in processed.items():  # the first group on it pays for it
                    payer = next((g for g in needed if g[: len(prefix)] == prefix), None)
                    if payer is not None:
                        prefixes.fresh[payer] += tokens
        for batch in self._prefix_batches(needed):
            prefixes.ready.update(self._prefill_prefixes(batch, prefixes.fresh))

    def _prefix_batches(self, prefixes: Sequence[tuple[int, ...]]) -> Iterator[list[tuple[int, ...]]]:
        """``prefixes`` in batches of :func:`prefix_group`, longest first by the tokens each has
        to process (after the longest cached prefix it extends)."""
        todo = {prefix: self._to_process(prefix) for prefix in prefixes}
        rest = sorted(prefixes, key=todo.__getitem__, reverse=True)
        while rest:
            size = prefix_group([todo[p] for p in rest])
            yield rest[:size]
            rest = rest[size:]

    def _stored(self, prefix: tuple[int, ...]) -> tuple[list[Any] | None, tuple[tuple[int, ...], list[Any]] | None]:
        """``prefix``'s cache in the LRU, or else the longest stored prefix it extends (with its
        cache); (None, None) when neither is stored."""
        cached = _prefix_cache.get((self.model_path, prefix))
        if cached is not None:
            return cached, None
        return None, _prefix_cache.longest_prefix(self.model_path, prefix)

    def _to_process(self, prefix: tuple[int, ...]) -> int:
        """Tokens of ``prefix`` a prefill would process: none when cached, else those after the
        longest cached prefix it extends."""
        cached, base = self._stored(prefix)
        if cached is not None:
            return 0
        return len(prefix) - (len(base[0]) if base is not None else 0)

    def _insert(self, generator: Any, prepared: _Prepared, prefixes: _Prefixes) -> tuple[int, int]:
        """Queue one request (from its prefix cache when it has one); return (uid, cached tokens)."""
        request = prepared.request
        sampler = make_request_sampler(request.temperature, request.top_p, request.seed)
        cache = None
        cached = 0
        prompt = prepared.tokens
        group = prepared.group
        if prepared.prefix_len > 0:
            cache = prefixes.ready.get(group)
            if cache is None:  # prefilled earlier but not ready (a restart after a failure)
                cache = self._prefill_prefixes([group])[group]
            prompt = prepared.tokens[prepared.prefix_len :]
            # The first request of a group pays for what this call prefilled for it.
            paid = 0 if group in prefixes.paid else prefixes.fresh[group]
            cached = max(0, prepared.prefix_len - paid)  # a shared part evicted and prefilled again: not below 0
            prefixes.paid.add(group)
            prefixes.remaining[group] -= 1
            if prefixes.remaining[group] <= 0:
                prefixes.ready.pop(group, None)  # the LRU may still hold it for a later call
        self.stats.requests += 1
        self.stats.prompt_tokens += len(prepared.tokens)
        self.stats.cached_prompt_tokens += cached
        self.stats.processed_prompt_tokens += len(prompt)
        uids = generator.insert(
            [prompt],
            max_tokens=[prepared.max_tokens],
            caches=[cache] if cache is not None else None,
            samplers=[sampler],
        )
        return int(uids[0]), cached

    @staticmethod
    def _early_finish(tokenizer: Any, flight: _InFlight) -> str | None:
        """The request's stop check on its text so far, every :data:`STOP_CHECK_TOKENS` tokens."""
        stop_when = flight.prepared.request.stop_when
        if stop_when is None or len(flight.tokens) % STOP_CHECK_TOKENS:
            return None
        return stop_when(tokenizer.decode(flight.tokens))

    def _result(self, tokenizer: Any, flight: _InFlight, finish_reason: str) -> GenerationResult:
        prepared = flight.prepared
        self.stats.completion_tokens += len(flight.tokens)
        return GenerationResult(
            key=prepared.request.key,
            text=tokenizer.decode(flight.tokens),
            prompt_tokens=len(prepared.tokens),
            completion_tokens=len(flight.tokens),
            cached_prompt_tokens=flight.cached,
            latency_ms=(time.perf_counter() - flight.started) * 1000.0,
            finish_reason=finish_reason,
            extra={"model_id": self.model_id},
        )

    def close(self) -> None:
        """Forget this backend's reference to the model (the process cache keeps it; see release_models)."""
        self._loaded = None


def _suffix_len(prepared: _Prepared) -> int:
    return len(prepared.tokens) - prepared.prefix_len


def prefill_group(lengths: Sequence[int]) -> int:
    """How many of ``lengths`` (prompt lengths, longest first) to prefill together: while the
    group's padded tokens stay within :data:`PREFILL_PADDING` of its real tokens, and always
    until it holds :data:`PREFILL_GROUP_TOKENS` real tokens."""
    real = 0
    for size, length in enumerate(lengths):
        if real >= PREFILL_GROUP_TOKENS and lengths[0] * (size + 1) > PREFILL_PADDING * (real + length):
            return size
        real += length
    return len(lengths)


def prefix_group(lengths: Sequence[int]) -> int:
    """How many of ``lengths`` (tokens to process per prefix, longest first) to prefill together:
    up to :data:`PREFIX_PREFILL_WIDTH` while they pad to at most :data:`PREFIX_BATCH_TOKENS`,
    at least one. Short prefixes share a batch; long ones go alone: a prefix of a few hundred
    tokens already makes matrix products of that many rows, and a batch would pad the shorter
    ones to the longest (``benchmarks/prefix_prefill.py``)."""
    size = 1
    while size < min(len(lengths), PREFIX_PREFILL_WIDTH) and (size + 1) * lengths[0] <= PREFIX_BATCH_TOKENS:
        size += 1
    return size


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _shared_length(sequences: Sequence[Sequence[int]], keep: int) -> int:
    """How many leading tokens all ``sequences`` (two or more) share, leaving each at least
    ``keep`` of its own; 0 when fewer than :data:`SHARED_PREFIX_MIN`."""
    if len(sequences) < 2:
        return 0
    shared = min(len(s) for s in sequences) - keep
    for sequence in sequences[1:]:
        shared = min(shared, _common_prefix(sequences[0], sequence))
    return shared if shared >= SHARED_PREFIX_MIN else 0


def nest_prefixes(batch: Sequence[_Prepared]) -> None:
    """Requests of one prefix group whose suffixes begin with the same :data:`SHARED_PREFIX_MIN`
    or more tokens (the repository context an answer prompt shows before its question, the same
    for a chunk's questions of one theme) share those tokens too: their prefix grows by them and
    is prefilled once, from the group's cached prefix (its ``base``)."""
    groups: dict[tuple[int, ...], list[_Prepared]] = {}
    for prepared in batch:
        if prepared.prefix_len > 0:
            groups.setdefault(prepared.group, []).append(prepared)
    for members in groups.values():
        members.sort(key=_suffix)  # suffixes sharing a start are neighbours
        clusters = [[members[0]]]
        for prepared in members[1:]:
            if _common_prefix(_suffix(clusters[-1][-1]), _suffix(prepared)) >= SHARED_PREFIX_MIN:
                clusters[-1].append(prepared)
            else:
                clusters.append([prepared])
        for cluster in clusters:
            shared = _shared_length([_suffix(p) for p in cluster], MIN_SUFFIX_TOKENS)
            for member in cluster if shared else ():
                member.base = member.group
                member.prefix_len += shared
                member.group = tuple(member.tokens[: member.prefix_len])


def _shared_start(prefixes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The tokens two or more ``prefixes`` all start with, when at least :data:`SHARED_PREFIX_MIN`
    (and shorter than each); else empty."""
    shared = _shared_length(prefixes, 1)
    return prefixes[0][:shared] if shared else ()


def _suffix(prepared: _Prepared) -> list[int]:
    return prepared.tokens[prepared.prefix_len :]


def _share_common_prefix(waiting: list[_Prepared]) -> None:
    """Requests without a prefix of their own whose prompts all begin with the same
    :data:`SHARED_PREFIX_MIN` or more tokens (the chat template's default system prompt, a
    shared instruction) share those tokens as one prefix, prefilled once."""
    plain = [p for p in waiting if p.prefix_len == 0]
    shared = _shared_length([p.tokens for p in plain], MIN_SUFFIX_TOKENS)
    for prepared in plain if shared else ():
        prepared.prefix_len = shared
        prepared.group = tuple(prepared.tokens[:shared])


def _error(
    request: GenerationRequest,
    category: Any,
    message: str,
    *,
    retryable: bool = True,
    prompt_tokens: int = 0,
) -> GenerationResult:
    return GenerationResult(
        key=request.key,
        prompt_tokens=prompt_tokens,
        finish_reason="error",
        error=RequestFailure(category=category, message=message, retryable=retryable),
    )


def _model_fingerprint(model_path: str) -> str:
    """Stable identity of a model: name plus a hash of what defines its weights."""
    path = Path(model_path)
    if not path.is_dir():
        return f"mlx:{model_path}"
    digest = hashlib.sha256()
    stamp = path / "cicdllm-prepared.json"
    if stamp.is_file():
        try:
            data = json.loads(stamp.read_text(encoding="utf-8"))
            digest.update(str(data.get("source_sha256", "")).encode())
            digest.update(str(data.get("dtype", "")).encode())
        except (OSError, json.JSONDecodeError):
            pass
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        file = path / name
        if file.is_file():
            digest.update(file.read_bytes())
    for weights in sorted(path.glob("*.safetensors")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    name = path.name
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        name = path.parent.parent.name[len("models--") :].replace("--", "/")  # an HF cache snapshot: org/name
    return f"mlx:{name}@{digest.hexdigest()[:12]}"
