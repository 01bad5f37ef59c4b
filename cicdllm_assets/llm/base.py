"""The one LLM interface both backends (mlx, openai) implement.

Callers build :class:`GenerationRequest` objects whose chat ``messages`` start with a
shared prefix (system prompt + the code chunk) and end with the task instruction, so
a backend can reuse the prefix's KV cache across a chunk's questions and answers.
``generate`` yields one :class:`GenerationResult` per request as each completes (order
not guaranteed), so the caller can commit each item to the ledger immediately. Given a
:class:`RequestFeed`, a backend that reads it as it goes also runs the requests the caller
adds while results stream (a retry joins the running batch instead of a pass of its own).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, Protocol, runtime_checkable

from cicdllm_assets.errors import CIRCUIT_OPEN, CicdllmError
from cicdllm_assets.quality.secrets import find_secrets, is_config_path

ErrorCategory = Literal[
    "timeout",
    "http_status",
    "connection",
    "parse_error",
    "context_overflow",
    "circuit_open",
    "backend_error",
    "secret",
]


@dataclass(frozen=True)
class ChatMessage:
    """One chat message."""

    role: Literal["system", "user", "assistant"]
    content: str


StopCheck = Callable[[str], str | None]
"""Looks at a completion so far: a finish reason ends it there (``None``: go on). Backends
call it every few tokens (MLX) or streamed deltas (openai) and report the reason it gave."""

STOP_CHECK_TOKENS = 4
"""How many new tokens a backend decodes between two calls of a request's :data:`StopCheck`."""


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to produce. ``key`` is the caller's ledger key, echoed back."""

    key: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    prefix_messages: int = 0
    """How many leading messages form the shared prefix (0 = no reuse hint)."""
    stop_when: StopCheck | None = field(default=None, compare=False)
    """Ends the completion early (a loop, a complete question list); see :data:`StopCheck`."""


class RequestFeed:
    """The requests of one ``generate`` call, to which the caller may :meth:`add` more while
    its results stream.

    Iterating takes the requests not taken yet, each when it is asked for (so requests added
    meanwhile come too); :meth:`take` takes all there are now. A backend that reads its
    requests once (``list(feed)``) leaves those added later to the caller's next call; one that
    polls :meth:`take` between its steps runs them in the batch it is decoding. Not thread-safe:
    the caller adds from the thread that iterates the results.
    """

    def __init__(self, requests: Iterable[GenerationRequest] = ()) -> None:
        self._pending: deque[GenerationRequest] = deque(requests)
        self.taken = 0
        """Requests taken so far."""

    @classmethod
    def of(cls, requests: Iterable[GenerationRequest]) -> RequestFeed:
        """``requests`` itself when it is a feed, else a feed holding them."""
        return requests if isinstance(requests, RequestFeed) else cls(requests)

    def add(self, request: GenerationRequest) -> None:
        """Queue one more request."""
        self._pending.append(request)

    def take(self) -> list[GenerationRequest]:
        """Every request not taken yet."""
        out = list(self._pending)
        self._pending.clear()
        self.taken += len(out)
        return out

    def __iter__(self) -> Iterator[GenerationRequest]:
        while self._pending:
            self.taken += 1
            yield self._pending.popleft()

    def __len__(self) -> int:
        """Requests not taken yet."""
        return len(self._pending)


@dataclass(frozen=True)
class RequestFailure:
    """Why a request failed (a value, not an exception); ``category`` is what the ledger records."""

    category: ErrorCategory
    message: str
    status_code: int | None = None
    retryable: bool = True


@dataclass(frozen=True)
class GenerationResult:
    """What came back for one request (``error`` set when it failed)."""

    key: str
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    latency_ms: float = 0.0
    finish_reason: str = ""
    error: RequestFailure | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the request produced text."""
        return self.error is None


@lru_cache(maxsize=4096)
def _message_secrets(content: str, path: str) -> tuple[str, ...]:
    """Log-safe descriptions of the secrets in one message (a chunk's context repeats: memoised)."""
    found = find_secrets(content)
    if path:
        found += find_secrets(content, path)
    return tuple(sorted({finding.describe() for finding in found}))


def request_secrets(request: GenerationRequest, path: str = "") -> list[str]:
    """The last gate before a backend: log-safe descriptions of every secret still in the
    fully rendered request (empty when it may be sent). ``path`` (a config file's path)
    adds that file type's stricter rules to the generic scan."""
    hint = path if path and is_config_path(path) else ""
    return [
        f"message {index + 1} ({message.role}): {description}"
        for index, message in enumerate(request.messages)
        for description in _message_secrets(message.content, hint)
    ]


class CircuitOpenError(CicdllmError, RuntimeError, category=CIRCUIT_OPEN):
    """Raised by a backend that has seen sustained failure: stop the run, keep progress."""


@runtime_checkable
class LLMBackend(Protocol):
    """What the question and answer assets need from any backend."""

    @property
    def model_id(self) -> str:
        """Stable model identity for ledger keys and provenance."""
        ...

    @property
    def context_window(self) -> int:
        """Maximum prompt + completion tokens."""
        ...

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Exact prompt tokens for these messages after the chat template."""
        ...

    def count_tokens(self, text: str) -> int:
        """Exact tokens of plain text (used to trim chunks by real counts)."""
        ...

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[GenerationResult]:
        """Run requests (batched/concurrent as the backend sees fit), yielding each result;
        ``requests`` may be a :class:`RequestFeed` the caller adds to while iterating."""
        ...

    def close(self) -> None:
        """Release the model or connections."""
        ...
