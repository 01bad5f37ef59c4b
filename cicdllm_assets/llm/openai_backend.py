"""OpenAI-compatible chat-completions backend (vLLM, llama.cpp, Ollama, LM Studio, mlx_lm.server).

``generate`` is synchronous (assets call it from any thread) but runs the requests on an
asyncio event loop the backend owns, in a dedicated daemon thread, with one pooled
``httpx.AsyncClient``. That works whether or not the calling thread has its own running
loop. Results are handed back through a thread-safe queue as each request completes.

Resilience, per request:

- requests in flight follow the server (:mod:`~cicdllm_assets.llm.limiter`): an
  AIMD limiter starts at one, grows while latency stays flat and cuts back on timeouts,
  429s, 5xx, connection errors and rising latency, within ``max_concurrency``; a request
  gives its slot back while it backs off and waits for the limiter again before a retry;
- responses are streamed (``stream: true``, server-sent events, usage when the server
  sends it; a plain JSON reply is accepted too): an attempt times out after
  ``timeout_seconds`` of *silence* (no token, no byte), never for being long, and after
  ``connect_timeout_seconds`` to open the connection; a timed-out attempt's connection is
  closed (which stops a streaming server's work) before anything is retried;
- retries with exponential backoff and full jitter
  (``uniform(0, min(backoff_max, backoff_base * 2**attempt))``) for timeouts, connection
  errors, HTTP 408/429/5xx and malformed or truncated JSON; ``Retry-After`` (seconds or an
  HTTP date) replaces the jittered delay, capped at ``backoff_max_seconds``;
- no retry for other 4xx; a 400 whose message is about the context length is reported as
  ``context_overflow``.

Seeds: ``seed="auto"`` sends the request's seed only to servers that batch seeded requests;
mlx_lm.server serves a request that carries a seed on its own (no batching), so it gets
none. The server is recognised from ``/models`` (``owned_by``) and the ``Server`` header
(:func:`identify_server`); ``always`` / ``never`` force it. Each result records
``extra["seed_sent"]``.

A circuit breaker counts consecutive requests that failed after their retries (a
``context_overflow`` is the request's own fault: it neither counts nor resets). When the
count reaches ``circuit_breaker_failures`` no further request is sent: every remaining
request of the call is yielded as a ``circuit_open`` error and ``generate`` then raises
:class:`CircuitOpenError`. The breaker stays open for the backend's life (one run); a
re-run resumes from the ledger.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import json
import logging
import math
import os
import queue
import re
import secrets
import threading
import time
from collections.abc import Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import httpx

from cicdllm_assets.config import ModelPaths
from cicdllm_assets.lifecycle import Closing
from cicdllm_assets.llm.base import (
    ChatMessage,
    CircuitOpenError,
    GenerationRequest,
    GenerationResult,
    RequestFailure,
    RequestFeed,
    StopCheck,
)
from cicdllm_assets.llm.limiter import AdaptiveLimiter, LimiterSnapshot
from cicdllm_assets.llm.models.paths import EMBEDDED_ALIAS, EMBEDDED_MODEL_NAME, resolve_tokenizer
from cicdllm_assets.llm.tokenizer_counter import TokenCounter, load_token_counter

logger = logging.getLogger(__name__)

T = TypeVar("T")

SeedMode = Literal["auto", "always", "never"]

SERVERS_BATCHING_SEEDED = {
    "vllm": True,  # per-request generators inside the continuous batch
    "llama.cpp": True,  # per-slot sampler seeds, slots decode together
    "llama-cpp-python": True,  # one request at a time anyway: a seed costs nothing
    "ollama": True,  # options.seed per request on top of llama.cpp slots
    "lmstudio": True,  # llama.cpp engine: as llama.cpp
    "mlx_lm.server": False,  # a request with a seed is served alone (mlx_lm.server._is_batchable)
    "unknown": True,  # the OpenAI API itself: seed is a per-request sampling option
}
"""Whether ``seed="auto"`` sends a seed to each recognised server."""

SERVER_DEFAULT_MODEL = "default_model"
"""Model name sent for ``llm.model: embedded`` when ``llm.openai.model`` is unset."""

DEFAULT_CONTEXT_WINDOW = 8192
"""Used when neither ``llm.context_window`` nor the server's ``/models`` gives one."""

CONTEXT_LENGTH_FIELDS = (
    "max_model_len",  # vLLM
    "context_length",  # OpenRouter, LM Studio, Ollama (/api/show)
    "context_window",
    "max_context_length",  # LM Studio
    "n_ctx",  # llama.cpp
    "n_ctx_train",  # llama.cpp /v1/models meta
    "max_seq_len",
    "max_sequence_length",
)

_CONTEXT_OVERFLOW = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|max_model_len|too many tokens|"
    r"prompt is too long|exceeds? the (available )?context|input is too long|n_ctx",
    re.IGNORECASE,
)

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclass(frozen=True)
class OpenAIBackendConfig:
    """Everything the backend needs; built from ``llm.openai`` by :meth:`OpenAIBackend.from_model_paths`."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    max_concurrency: int = 8
    adaptive_concurrency: bool = True
    timeout_seconds: float = 120.0
    """Longest silence (no token, no byte) before an attempt is abandoned."""
    connect_timeout_seconds: float = 10.0
    seed: SeedMode = "auto"
    max_retries: int = 5
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    circuit_breaker_failures: int = 10
    context_window: int | None = None
    tokenizer_path: Path | None = None
    model_id: str | None = None
    """Ledger/provenance identity; default: ``model``."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if not self.model:
            raise ValueError("model name must not be empty")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be > 0, got {self.timeout_seconds}")
        if self.connect_timeout_seconds <= 0:
            raise ValueError(f"connect_timeout_seconds must be > 0, got {self.connect_timeout_seconds}")
        if self.seed not in ("auto", "always", "never"):
            raise ValueError(f"seed must be auto, always or never, got {self.seed!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.circuit_breaker_failures < 1:
            raise ValueError(f"circuit_breaker_failures must be >= 1, got {self.circuit_breaker_failures}")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))


class _LoopThread:
    """An asyncio event loop running forever in its own daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; a concurrent future for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        """Stop the loop, join the thread and close the loop."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


@dataclass
class _Failure:
    error: RequestFailure
    retry_after: float | None = None


@dataclass
class _Success:
    text: str
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_prompt_tokens: int
    latency_ms: float
    first_token_s: float = 0.0
    streamed: bool = False


class _CircuitBreaker:
    """Counts consecutive final failures; opens at ``threshold``. Used from the loop thread only."""

    def __init__(self, threshold: int, base_url: str) -> None:
        self.threshold = threshold
        self.base_url = base_url
        self.consecutive = 0
        self.is_open = False
        self.last_error: RequestFailure | None = None

    def record_success(self) -> None:
        self.consecutive = 0

    def record_failure(self, error: RequestFailure) -> None:
        if error.category == "context_overflow":
            return
        self.consecutive += 1
        self.last_error = error
        if self.consecutive >= self.threshold and not self.is_open:
            self.is_open = True
            logger.error("%s", self.message)

    @property
    def message(self) -> str:
        last = _describe(self.last_error) if self.last_error else "unknown error"
        return (
            f"model server {self.base_url} failed {self.consecutive} times in a row (last: {last}); "
            "stopping; progress is kept — re-run to resume"
        )


def _describe(error: RequestFailure) -> str:
    if error.category == "http_status" and error.status_code is not None:
        return f"HTTP {error.status_code} {error.message}"
    return f"{error.category}: {error.message}"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def is_context_overflow(status_code: int, message: str) -> bool:
    """A 400/413/422 whose message says the prompt does not fit the model's context."""
    return status_code in (400, 413, 422) and bool(_CONTEXT_OVERFLOW.search(message))


def _error_message_from_body(response: httpx.Response) -> str:
    """The server's error message (OpenAI ``{"error": {"message"}}`` or any text), shortened."""
    text = response.text
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:300]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            for key in ("message", "detail", "error"):
                if isinstance(err.get(key), str):
                    return str(err[key])[:300]
        if isinstance(err, str):
            return err[:300]
        if isinstance(data.get("detail"), str):
            return str(data["detail"])[:300]
    return text.strip()[:300]


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def find_context_length(models_payload: object, model: str) -> int | None:
    """A context length from a ``/models`` payload: the entry for ``model`` (or the first)."""
    entries: list[Any] = []
    if isinstance(models_payload, dict):
        data = models_payload.get("data", models_payload.get("models"))
        entries = data if isinstance(data, list) else [models_payload]
    elif isinstance(models_payload, list):
        entries = models_payload
    entries = [e for e in entries if isinstance(e, dict)]
    if not entries:
        return None
    chosen = [e for e in entries if e.get("id") == model or e.get("name") == model or e.get("model") == model]
    ordered = chosen + [e for e in entries if e not in chosen]

    def search(node: dict[str, Any], depth: int) -> int | None:
        for name in CONTEXT_LENGTH_FIELDS:
            found = _int_or_none(node.get(name))
            if found:
                return found
        if depth < 2:
            for child in node.values():
                if isinstance(child, dict):
                    nested = search(child, depth + 1)
                    if nested:
                        return nested
        return None

    for entry in ordered:
        found = search(entry, 0)
        if found:
            return found
    return None


class _SSEAccumulator:
    """Collects a streamed chat completion (``data: {...}`` events until ``data: [DONE]``)."""

    def __init__(self, stop_when: StopCheck | None = None) -> None:
        self.parts: list[str] = []
        self.stop_when = stop_when
        self.stopped = False
        """The request's stop check ended it (the connection is closed, the server stops)."""
        self.finish_reason = ""
        self.usage: dict[str, Any] = {}
        self.first_token_s: float | None = None
        self.done = False
        self.error: str | None = None

    def feed(self, line: str, elapsed_s: float) -> bool:
        """Take one line; True once the stream is complete."""
        if not line.startswith("data:"):
            return False  # blank separators, ": keepalive" comments, event:/id: fields
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return True
        try:
            event = json.loads(data)
        except ValueError:
            self.error = f"stream event is not JSON: {data[:80]!r}"
            return True
        if not isinstance(event, dict):
            return False
        if event.get("error") is not None:
            self.error = str(event["error"])[:300]
            return True
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        choices = event.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(text, str) and text:
                self.parts.append(text)
                reason = self.stop_when("".join(self.parts)) if self.stop_when is not None else None
                if reason is not None:
                    self.finish_reason, self.done, self.stopped = reason, True, True
                    return True
            if self.first_token_s is None:
                self.first_token_s = elapsed_s
            if isinstance(choice.get("finish_reason"), str):
                self.finish_reason = choice["finish_reason"]
        return False

    def result(self, latency_ms: float) -> _Success | _Failure:
        """The completion, or why the stream is unusable (an error event, cut short)."""
        if self.error is not None:
            return _Failure(RequestFailure("parse_error", self.error))
        if not self.done and not self.finish_reason:
            return _Failure(RequestFailure("connection", "the stream ended before the completion was complete"))
        details = self.usage.get("prompt_tokens_details")
        cached = _int_or_none(details.get("cached_tokens")) if isinstance(details, dict) else None
        return _Success(
            text="".join(self.parts),
            finish_reason=self.finish_reason,
            prompt_tokens=_int_or_none(self.usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(self.usage.get("completion_tokens")),
            cached_prompt_tokens=cached or 0,
            latency_ms=latency_ms,
            first_token_s=self.first_token_s if self.first_token_s is not None else latency_ms / 1000.0,
            streamed=True,
        )


def identify_server(headers: Mapping[str, str], models_payload: object) -> str:
    """Which server answers: ``vllm``, ``llama.cpp``, ``llama-cpp-python``, ``ollama``,
    ``lmstudio``, ``mlx_lm.server`` or ``unknown``, from the ``/models`` reply's
    ``owned_by`` fields and its ``Server`` header."""
    server = str(headers.get("server", "")).lower()
    entries: list[Any] = []
    if isinstance(models_payload, dict) and isinstance(models_payload.get("data"), list):
        entries = [e for e in models_payload["data"] if isinstance(e, dict)]
    owners = {str(e.get("owned_by", "")).lower() for e in entries if "owned_by" in e}
    if "vllm" in owners:
        return "vllm"
    if "llamacpp" in owners or "llama.cpp" in server:
        return "llama.cpp"
    if "ollama" in server or "ollama" in owners or "library" in owners:
        return "ollama"
    if "organization_owner" in owners or "lm studio" in server or "lmstudio" in server:
        return "lmstudio"
    if "me" in owners and server.startswith("uvicorn"):
        return "llama-cpp-python"
    if server.startswith("basehttp") and not owners:  # Python's http.server, no owned_by (or no list)
        return "mlx_lm.server"
    return "unknown"


class OpenAIBackend(Closing):
    """:class:`~cicdllm_assets.llm.base.LLMBackend` over ``POST {base_url}/chat/completions``."""

    def __init__(
        self,
        config: OpenAIBackendConfig,
        token_counter: TokenCounter | None = None,
        model_paths: ModelPaths | None = None,
    ) -> None:
        self.config = config
        self._model_paths = model_paths
        self._counter = token_counter
        self.approximate_counts = False
        """True when prompt counts use the embedded tokenizer as an approximation (no tokenizer found)."""
        self._counter_lock = threading.Lock()
        self._loop_thread: _LoopThread | None = None
        self._loop_lock = threading.Lock()
        self._client: httpx.AsyncClient | None = None
        self._limiter = AdaptiveLimiter(config.max_concurrency, adaptive=config.adaptive_concurrency)
        self._server_kind: str | None = None
        self._models_payload: object = None
        self._breaker = _CircuitBreaker(config.circuit_breaker_failures, config.base_url)
        self._context_window: int | None = config.context_window
        self._closed = False
        self._active: set[concurrent.futures.Future[None]] = set()
        self._rng = secrets.SystemRandom()

    @classmethod
    def from_model_paths(cls, paths: ModelPaths) -> OpenAIBackend:
        """Build from ``llm.openai`` + ``llm.model`` (``paths`` also resolve the tokenizer when needed)."""
        llm = paths.llm
        oa = llm.openai
        api_key: str | None = oa.api_key.get_secret_value() if oa.api_key is not None else None
        if api_key is None and oa.api_key_env:
            api_key = os.environ.get(oa.api_key_env) or None
        tokenizer_path = paths.resolve(oa.tokenizer) if oa.tokenizer else None
        model, model_id = oa.model or llm.model, None
        if not oa.model and llm.model == EMBEDDED_ALIAS:
            # mlx_lm.server (and llama.cpp) answer "default_model" with the model they were
            # started with, e.g. `mlx_lm.server --model .cicdllm/models/smollm2-135m-instruct`
            model, model_id = SERVER_DEFAULT_MODEL, EMBEDDED_MODEL_NAME
        config = OpenAIBackendConfig(
            base_url=oa.base_url,
            model=model,
            model_id=model_id,
            api_key=api_key,
            max_concurrency=oa.max_concurrency,
            adaptive_concurrency=oa.adaptive_concurrency,
            timeout_seconds=oa.timeout_seconds,
            connect_timeout_seconds=oa.connect_timeout_seconds,
            seed=oa.seed,
            max_retries=oa.max_retries,
            backoff_base_seconds=oa.backoff_base_seconds,
            backoff_max_seconds=oa.backoff_max_seconds,
            circuit_breaker_failures=oa.circuit_breaker_failures,
            context_window=llm.context_window,
            tokenizer_path=tokenizer_path,
        )
        return cls(config, model_paths=paths)

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={self.config.base_url!r}, model={self.config.model!r})"

    # ------------------------------------------------------------------ identity

    @property
    def model_id(self) -> str:
        """The served model's name (what ledger keys and provenance record)."""
        return self.config.model_id or self.config.model

    @property
    def base_url(self) -> str:
        """The server's OpenAI API root, e.g. ``http://127.0.0.1:8080/v1``."""
        return self.config.base_url

    @property
    def circuit_open(self) -> bool:
        """True once the circuit breaker has opened (no request is sent any more)."""
        return self._breaker.is_open

    @property
    def server_kind(self) -> str | None:
        """The recognised server (:func:`identify_server`); None until it was asked."""
        return self._server_kind

    @property
    def sends_seed(self) -> bool:
        """Whether requests carry their seed (``llm.openai.seed`` and the server's kind)."""
        if self.config.seed != "auto":
            return self.config.seed == "always"
        return SERVERS_BATCHING_SEEDED.get(self._server_kind or "unknown", True)

    def load_status(self) -> dict[str, object]:
        """Concurrency limit, requests in flight, observed latency, server kind, seed use."""
        snapshot: LimiterSnapshot = self._limiter.snapshot()
        return {**snapshot.as_dict(), "server": self._server_kind or "unknown", "seed_sent": self.sends_seed}

    def reset_circuit(self) -> None:
        """Close the circuit breaker again (e.g. after the operator fixed the server)."""
        self._breaker.is_open = False
        self._breaker.consecutive = 0

    @property
    def context_window(self) -> int:
        """``llm.context_window``, else the server's ``/models`` context length, else 8192."""
        if self._context_window is None:
            found: int | None = None
            try:
                self._run(self._probe())
                found = find_context_length(self._models_payload, self.config.model)
            except (httpx.HTTPError, ValueError, TimeoutError, concurrent.futures.TimeoutError) as exc:
                logger.warning("could not read %s/models: %s", self.config.base_url, exc)
            if found is None:
                logger.warning(
                    "context window of %r unknown (set llm.context_window); assuming %d tokens",
                    self.config.model,
                    DEFAULT_CONTEXT_WINDOW,
                )
                found = DEFAULT_CONTEXT_WINDOW
            self._context_window = found
        return self._context_window

    # ------------------------------------------------------------------ tokens

    def _token_counter(self) -> TokenCounter:
        with self._counter_lock:
            if self._counter is None:
                path = self.config.tokenizer_path
                if path is None:
                    if self._model_paths is None:
                        raise RuntimeError(
                            "no tokenizer for token counting: set llm.openai.tokenizer to the served "
                            "model's tokenizer.json"
                        )
                    choice = resolve_tokenizer(self._model_paths)
                    path, self.approximate_counts = choice.path, choice.approximate
                self._counter = load_token_counter(str(path))
            return self._counter

    def count_tokens(self, text: str) -> int:
        """Exact tokens of ``text`` with the served model's tokenizer."""
        return self._token_counter().count(text)

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Exact prompt tokens after the model's chat template (see tokenizer_counter)."""
        return self._token_counter().count_prompt_tokens(messages)

    # ------------------------------------------------------------------ loop/client

    def _loop(self) -> _LoopThread:
        with self._loop_lock:
            if self._closed:
                raise RuntimeError("OpenAIBackend is closed")
            if self._loop_thread is None:
                self._loop_thread = _LoopThread(name=f"openai-backend-{id(self):x}")
            return self._loop_thread

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop().run(coro, timeout=self.config.timeout_seconds * 2 + 5)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def _ensure_client(self) -> httpx.AsyncClient:
        """Create the pooled client on first use (inside the loop thread)."""
        if self._client is None:
            size = self.config.max_concurrency
            host = urlsplit(self.config.base_url).hostname or ""
            # silence is timed per event by _attempt; httpx only bounds connecting and sending
            timeout = httpx.Timeout(
                connect=self.config.connect_timeout_seconds,
                read=None,
                write=self.config.timeout_seconds,
                pool=None,
            )
            self._client = httpx.AsyncClient(
                headers=self._headers(),
                timeout=timeout,
                limits=httpx.Limits(
                    # below uvicorn's (vLLM's) 5 s keep-alive, so a pooled socket is not
                    # reused just as the server closes it
                    max_connections=size,
                    max_keepalive_connections=size,
                    keepalive_expiry=4.0,
                ),
                # a proxy from the environment must never see loopback traffic
                trust_env=host not in _LOOPBACK_HOSTS,
            )
        return self._client

    async def _probe(self) -> None:
        """Read ``/models`` once: the server's kind (for seeds) and context length."""
        if self._server_kind is not None:
            return
        client = self._ensure_client()
        async with asyncio.timeout(min(self.config.timeout_seconds, 30.0)):
            response = await client.get(f"{self.config.base_url}/models")
        try:
            self._models_payload = response.json() if response.is_success else None
        except ValueError:  # e.g. mlx_lm.server without a Hugging Face cache: 200, then no body
            self._models_payload = None
        self._server_kind = identify_server(response.headers, self._models_payload)
        logger.info(
            "model server %s: %s (seed %s)",
            self.config.base_url,
            self._server_kind,
            "sent" if self.sends_seed else "not sent",
        )

    # ------------------------------------------------------------------ generate

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[GenerationResult]:
        """Send the requests concurrently; yield each result as it completes.

        Given a :class:`~cicdllm_assets.llm.base.RequestFeed`, requests added to it while the
        results stream are sent at once, next to those still running. Raises
        :class:`CircuitOpenError` after yielding every result when the circuit breaker is
        open. Closing the iterator early cancels the outstanding requests.
        """
        feed = RequestFeed.of(requests)
        batch = feed.take()
        if not batch:
            return
        results: queue.SimpleQueue[GenerationResult | BaseException] = queue.SimpleQueue()
        futures: list[concurrent.futures.Future[None]] = []

        def submit(part: list[GenerationRequest]) -> None:
            future = self._loop().submit(self._run_batch(part, results))
            with self._loop_lock:
                self._active.add(future)
            futures.append(future)

        submit(batch)
        expected, circuit_errors = len(batch), 0
        try:
            while expected:
                item = self._next_result(results, futures)
                if isinstance(item, BaseException):
                    raise item
                if item.error is not None and item.error.category == "circuit_open":
                    circuit_errors += 1
                expected -= 1
                yield item
                late = feed.take()  # added by the caller while it handled this result
                if late:
                    submit(late)
                    expected += len(late)
            for future in futures:
                future.result()
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()
            with self._loop_lock:
                self._active.difference_update(futures)
        if circuit_errors:
            raise CircuitOpenError(self._breaker.message)

    @staticmethod
    def _next_result(
        results: queue.SimpleQueue[GenerationResult | BaseException], futures: list[concurrent.futures.Future[None]]
    ) -> GenerationResult | BaseException:
        """The next finished result; never blocks forever if a batch task died."""
        while True:
            try:
                return results.get(timeout=0.5)
            except queue.Empty:
                if not all(future.done() for future in futures):
                    continue
                try:
                    return results.get_nowait()
                except queue.Empty:
                    if any(future.cancelled() for future in futures):
                        return RuntimeError("generation was cancelled (backend closed?)")
                    exc = next((e for e in (f.exception() for f in futures) if e is not None), None)
                    return exc or RuntimeError("generation ended without returning every result")

    async def _run_batch(
        self, batch: list[GenerationRequest], results: queue.SimpleQueue[GenerationResult | BaseException]
    ) -> None:
        try:
            client = self._ensure_client()
        except Exception as exc:
            for _ in batch:
                results.put(exc)
            return
        if self._server_kind is None:
            try:
                await self._probe()
            except (httpx.HTTPError, ValueError, TimeoutError) as exc:
                self._server_kind = "unknown"
                logger.warning("could not identify the server at %s (%s): seeds are sent", self.config.base_url, exc)

        async def one(request: GenerationRequest) -> None:
            try:
                result = await self._execute(client, request)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not hang the consumer
                logger.exception("unexpected error for request %s", request.key)
                result = GenerationResult(
                    key=request.key,
                    error=RequestFailure("backend_error", f"{type(exc).__name__}: {exc}", retryable=False),
                )
            results.put(result)

        await asyncio.gather(*(one(request) for request in batch))

    def _circuit_result(self, request: GenerationRequest) -> GenerationResult:
        return GenerationResult(
            key=request.key,
            error=RequestFailure("circuit_open", self._breaker.message, retryable=True),
        )

    def _payload(self, request: GenerationRequest) -> bytes:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.sends_seed and request.seed is not None:
            body["seed"] = request.seed
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        cap = self.config.backoff_max_seconds
        if retry_after is not None:
            return min(retry_after, cap)
        return self._rng.uniform(0.0, min(cap, self.config.backoff_base_seconds * (2**attempt)))

    async def _execute(self, client: httpx.AsyncClient, request: GenerationRequest) -> GenerationResult:
        if self._breaker.is_open:
            return self._circuit_result(request)
        payload = self._payload(request)
        started = time.monotonic()
        attempt = 0
        while True:
            # a retry waits for the limiter like a new request (ahead of new ones: it holds a reservation)
            slot = await self._limiter.acquire(retry=attempt > 0)
            if self._breaker.is_open:
                await self._limiter.release(slot, "ignore")
                return self._circuit_result(request)
            try:
                outcome = await self._attempt(client, payload, request.stop_when)
            except BaseException:
                await self._limiter.release(slot, "ignore")
                raise
            if isinstance(outcome, _Success):
                await self._limiter.release(slot, "ok", outcome.first_token_s)
                self._breaker.record_success()
                return self._result(request, outcome, attempt + 1, started)
            error = self._redact(outcome.error)
            congested = (
                error.category in ("timeout", "connection")
                or error.status_code in (408, 429)
                or (error.status_code is not None and error.status_code >= 500)
            )
            final = not error.retryable or attempt >= self.config.max_retries
            await self._limiter.release(slot, "drop" if congested else "ignore", will_retry=not final)
            if final:
                self._breaker.record_failure(error)
                logger.warning("request %s failed after %d attempt(s): %s", request.key, attempt + 1, _describe(error))
                return GenerationResult(
                    key=request.key,
                    error=error,
                    latency_ms=(time.monotonic() - started) * 1000.0,
                    extra={"attempts": attempt + 1, "seed_sent": self.sends_seed},
                )
            delay = self._backoff(attempt, outcome.retry_after)
            logger.info(
                "request %s attempt %d failed (%s); retrying in %.2fs",
                request.key,
                attempt + 1,
                _describe(error),
                delay,
            )
            attempt += 1
            try:
                await asyncio.sleep(delay)
            except BaseException:
                await self._limiter.cancel_reservation()
                raise

    def _redact(self, error: RequestFailure) -> RequestFailure:
        """Never let the API key leave in an error message (a server may echo headers)."""
        key = self.config.api_key
        if key and key in error.message:
            return replace(error, message=error.message.replace(key, "***"))
        return error

    def _result(self, request: GenerationRequest, ok: _Success, attempts: int, started: float) -> GenerationResult:
        extra: dict[str, object] = {
            "attempts": attempts,
            "total_ms": (time.monotonic() - started) * 1000.0,
            "first_token_ms": ok.first_token_s * 1000.0,
            "streamed": ok.streamed,
            "seed_sent": self.sends_seed,
        }
        prompt_tokens = ok.prompt_tokens
        completion_tokens = ok.completion_tokens
        if prompt_tokens is None or completion_tokens is None:
            extra["usage_estimated"] = True
            try:
                if prompt_tokens is None:
                    prompt_tokens = self.count_prompt_tokens(request.messages)
                if completion_tokens is None:
                    completion_tokens = self.count_tokens(ok.text)
            except Exception as exc:  # no tokenizer: report zeros rather than fail the item
                logger.debug("cannot estimate usage: %s", exc)
                extra["usage_estimated"] = False
        return GenerationResult(
            key=request.key,
            text=ok.text,
            prompt_tokens=prompt_tokens or 0,
            completion_tokens=completion_tokens or 0,
            cached_prompt_tokens=ok.cached_prompt_tokens,
            latency_ms=ok.latency_ms,
            finish_reason=ok.finish_reason,
            extra=extra,
        )

    async def _attempt(
        self, client: httpx.AsyncClient, payload: bytes, stop_when: StopCheck | None = None
    ) -> _Success | _Failure:
        """One request: stream the reply, abandoning it after ``timeout_seconds`` of silence.

        Leaving the ``client.stream`` block before the body is complete closes the
        connection, so a timed-out request is cancelled on the server before any retry.
        """
        url = f"{self.config.base_url}/chat/completions"
        silence = self.config.timeout_seconds
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        stream = _SSEAccumulator(stop_when)
        try:
            async with asyncio.timeout(silence) as deadline:
                async with client.stream("POST", url, content=payload) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        return self._status_failure(response)
                    if "text/event-stream" not in response.headers.get("content-type", ""):
                        body = await response.aread()  # a server that does not stream: one JSON body
                        elapsed = time.monotonic() - started
                        return self._parse(body, elapsed * 1000.0, elapsed)
                    async with contextlib.aclosing(response.aiter_lines()) as lines:  # type: ignore[type-var]
                        async for line in lines:  # read to the end: a complete reply keeps its connection
                            deadline.reschedule(loop.time() + silence)  # progress: the clock restarts
                            if stream.feed(line, time.monotonic() - started) and (
                                stream.error is not None or stream.stopped
                            ):
                                break
                    return stream.result((time.monotonic() - started) * 1000.0)
        except (TimeoutError, httpx.TimeoutException) as exc:
            if stream.done:  # the reply was complete; only the end of the body was late
                return stream.result((time.monotonic() - started) * 1000.0)
            if isinstance(exc, httpx.ConnectTimeout):
                message = f"no connection within {self.config.connect_timeout_seconds:g}s"
            else:
                message = f"no token for {silence:g}s"
            return _Failure(RequestFailure("timeout", message))
        except httpx.TransportError as exc:
            return _Failure(RequestFailure("connection", f"{type(exc).__name__}: {exc}"))

    def _status_failure(self, response: httpx.Response) -> _Failure:
        status = response.status_code
        message = _error_message_from_body(response)
        if is_context_overflow(status, message):
            return _Failure(RequestFailure("context_overflow", message, status_code=status, retryable=False))
        retryable = status in (408, 429) or status >= 500
        retry_after = parse_retry_after(response.headers.get("Retry-After")) if retryable else None
        return _Failure(
            RequestFailure("http_status", message or response.reason_phrase, status_code=status, retryable=retryable),
            retry_after=retry_after,
        )

    @staticmethod
    def _parse(body: bytes, latency_ms: float, first_token_s: float) -> _Success | _Failure:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            snippet = body[:80].decode("utf-8", "replace")
            return _Failure(RequestFailure("parse_error", f"response is not JSON ({exc}): {snippet!r}"))
        if not isinstance(data, dict):
            return _Failure(RequestFailure("parse_error", f"response is a {type(data).__name__}, not an object"))
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            detail = data.get("error")
            message = "response has no choices" + (f": {detail}" if detail else "")
            return _Failure(RequestFailure("parse_error", message[:300]))
        choice = choices[0]
        message_obj = choice.get("message")
        content = message_obj.get("content") if isinstance(message_obj, dict) else choice.get("text")
        if content is not None and not isinstance(content, str):
            return _Failure(RequestFailure("parse_error", "choices[0].message.content is not a string"))
        raw_usage = data.get("usage")
        usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
        details = usage.get("prompt_tokens_details")
        cached = _int_or_none(details.get("cached_tokens")) if isinstance(details, dict) else None
        finish = choice.get("finish_reason")
        return _Success(
            text=content or "",
            finish_reason=finish if isinstance(finish, str) else "",
            prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(usage.get("completion_tokens")),
            cached_prompt_tokens=cached or 0,
            latency_ms=latency_ms,
            first_token_s=first_token_s,
        )

    # ------------------------------------------------------------------ lifecycle

    async def _aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def close(self) -> None:
        """Close the HTTP client and stop the event-loop thread (idempotent)."""
        with self._loop_lock:
            loop_thread, self._loop_thread = self._loop_thread, None
            self._closed = True
            active, self._active = list(self._active), set()
        for future in active:  # a generate() still running elsewhere ends with an error
            future.cancel()
        if loop_thread is None:
            return
        try:
            loop_thread.run(self._aclose(), timeout=10)
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:
            logger.debug("closing http client: %s", exc)
        loop_thread.stop()
