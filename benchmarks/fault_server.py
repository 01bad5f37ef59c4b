"""An OpenAI-compatible HTTP server on 127.0.0.1 that injects faults (tests and benchmarks only, not in the wheel).

Used by tests and benchmarks as a real server (real sockets, real HTTP/1.1 keep-alive):

    with FaultServer(faults=[Fault.http(500, times=2)], latency=0.05, capacity=8) as srv:
        backend = OpenAIBackend(OpenAIBackendConfig(base_url=srv.base_url, model="fake"))
        ...
        assert srv.request_count == 3

Endpoints: ``POST /v1/chat/completions`` (also ``/chat/completions``), ``GET /v1/models``,
``GET /health``. Answers are deterministic functions of the request (see
:func:`default_responder`): a question prompt ("... Reply with only a JSON array ...",
"Write 2 questions ...") gets a JSON array of questions naming identifiers of the code in
the prompt; any other prompt gets an answer that echoes those identifiers.

Faults are consumed in order: each chat request takes the first fault that still has
uses left and whose ``match`` (if any) occurs in the request's messages; a fault with
``times=None`` applies forever. Kinds: HTTP status (``Fault.http``), 429 with
``Retry-After`` (``Fault.rate_limited``), slow responses (``Fault.slow``), malformed
JSON, truncated JSON (valid HTTP, half a body), dropped connections (socket closed
without a response) and context-overflow 400s.

Capacity model: ``capacity`` requests are served at once, the rest wait in a queue, and
each served request holds its slot for ``latency`` seconds (its service time), times
``1 + degradation x (requests waiting in the queue, at most 8)`` when ``degradation`` is set (a server
that slows down under overload). Work a client abandoned still costs capacity: a request
whose client has gone is served all the same, up to its first write (streamed) or
completely (not streamed), like a real inference server.

Streaming: a request with ``"stream": true`` gets server-sent events (chunked transfer):
the first token after ``prefill_share`` (half) of the service time, the rest spread over
the remainder, then a usage event (when ``stream_options.include_usage``) and
``data: [DONE]``; a client that disconnects mid-stream frees its slot at the next event.
``streaming=False`` makes the server ignore ``stream`` (one JSON body, like a server that
does not stream). ``owned_by`` sets the ``/v1/models`` entries' ``owned_by`` (None: absent,
as on mlx_lm.server).

The server records every request (monotonic timestamps, body, headers, whether its
client had gone) and the maximum number of chat requests in the server (queued or
served). It binds loopback only and stops itself after ``max_lifetime``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

logger = logging.getLogger(__name__)

FaultKind = Literal["http", "slow", "malformed", "truncated", "drop", "context_overflow"]

CONTEXT_OVERFLOW_MESSAGE = (
    "This model's maximum context length is {ctx} tokens. However, you requested {req} tokens "
    "in the messages. Please reduce the length of the messages."
)

Responder = Callable[[dict[str, Any]], str]


@dataclass
class Fault:
    """One programmable fault; build with the classmethods."""

    kind: FaultKind
    times: int | None = 1
    status: int = 500
    retry_after: str | None = None
    delay: float = 0.0
    match: str | None = None
    body: str | None = None

    def __post_init__(self) -> None:
        if self.times is not None and self.times < 0:
            raise ValueError(f"times must be >= 0 or None, got {self.times}")
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0, got {self.delay}")

    @classmethod
    def http(
        cls,
        status: int = 500,
        times: int | None = 1,
        *,
        body: str | None = None,
        retry_after: str | float | None = None,
        match: str | None = None,
    ) -> Fault:
        """Reply with HTTP ``status`` (an OpenAI-style error body unless ``body`` is given)."""
        ra = None if retry_after is None else str(retry_after)
        return cls("http", times=times, status=status, body=body, retry_after=ra, match=match)

    @classmethod
    def rate_limited(cls, retry_after: str | float = 1, times: int | None = 1, *, match: str | None = None) -> Fault:
        """429 Too Many Requests with ``Retry-After`` (seconds, or an HTTP date string)."""
        return cls.http(429, times, retry_after=retry_after, match=match)

    @classmethod
    def slow(cls, delay: float, times: int | None = 1, *, match: str | None = None) -> Fault:
        """Wait ``delay`` seconds, then answer normally (a client timeout if it is too long)."""
        return cls("slow", times=times, delay=delay, match=match)

    @classmethod
    def malformed(cls, times: int | None = 1, *, match: str | None = None) -> Fault:
        """200 with a body that is not JSON."""
        return cls("malformed", times=times, match=match)

    @classmethod
    def truncated(cls, times: int | None = 1, *, match: str | None = None) -> Fault:
        """200 with the first half of a valid JSON body (Content-Length matches the half)."""
        return cls("truncated", times=times, match=match)

    @classmethod
    def drop(cls, times: int | None = 1, *, match: str | None = None) -> Fault:
        """Close the socket without sending any response."""
        return cls("drop", times=times, match=match)

    @classmethod
    def context_overflow(cls, times: int | None = 1, *, match: str | None = None) -> Fault:
        """400 with a vLLM-style "maximum context length" message."""
        return cls("context_overflow", times=times, status=400, match=match)


@dataclass(eq=False)
class RequestRecord:
    """One request the server received (times are ``time.monotonic()``; ``client_port``
    identifies the TCP connection, so keep-alive reuse is visible)."""

    index: int
    method: str
    path: str
    received_at: float
    headers: dict[str, str]
    client_port: int = 0
    body: dict[str, Any] | None = None
    fault: FaultKind | None = None
    status: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    abandoned: bool = False
    """The client had gone when the server wrote (its work was wasted)."""
    client_gone_at: float | None = None
    """When the server saw the client close the connection while the request was pending."""

    @property
    def prompt_text(self) -> str:
        """All message contents joined (empty for non-chat requests)."""
        return _messages_text(self.body or {})


# --------------------------------------------------------------------------- responder

_SYMBOL_LINE = re.compile(r"^\s*Symbol:\s*([A-Za-z_][\w.]*)", re.MULTILINE)
_FILE_LINE = re.compile(r"^\s*File:\s*(\S+)", re.MULTILINE)
_DEFINITIONS = re.compile(r"\b(?:def|class|func|fn|function|struct|interface|type|enum|trait|impl)\s+([A-Za-z_]\w*)")
_BACKTICKED = re.compile(r"`([A-Za-z_][\w.]*)(?:\(\))?`")
_N_QUESTIONS = re.compile(r"\b(\d{1,2})\s+(?:[\w-]+\s+){0,3}questions?\b", re.IGNORECASE)
_QUESTION_MODE = re.compile(r"json array|\b\d{1,2}\s+(?:[\w-]+\s+){0,3}questions?\b", re.IGNORECASE)
_ANSWER_MODE = re.compile(r"\banswer (?:this|the following)\b", re.IGNORECASE)

_EXAMPLE_LINE = re.compile(r"^\s*\d+\.\s+(.+\?)\s*$", re.MULTILINE)
_QUESTION_FORMS = (
    "What does `{a}` in {path} do, and what does it return?",
    "How does `{a}` handle its inputs, step by step?",
    "Which arguments does `{a}` expect and how is it called from `{b}`?",
    "What happens in `{a}` when its input is empty?",
    "Why is `{a}` structured this way instead of being merged into `{b}`?",
    "How would you unit test `{a}` in {path}?",
    "What role does `{b}` play in {path}?",
    "Which edge cases of `{a}` deserve a test, and why?",
)


def _messages_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))


def _last_message(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return str(messages[-1].get("content", ""))
    return ""


def prompt_identifiers(text: str) -> list[str]:
    """Identifiers named in a prompt: ``Symbol:`` line, definitions, then backticked names."""
    found: list[str] = []
    for pattern in (_SYMBOL_LINE, _DEFINITIONS, _BACKTICKED):
        for name in pattern.findall(text):
            if name not in found and name.lower() not in {"none", "null", "symbol"}:
                found.append(name)
    return found


def default_responder(body: dict[str, Any]) -> str:
    """Deterministic reply: a JSON array of questions for question prompts (one per numbered example
    question "1. ...?" when the prompt shows them), else an answer."""
    text = _messages_text(body)
    last = _last_message(body)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    idents = prompt_identifiers(text) or ["main"]
    path_match = _FILE_LINE.search(text)
    path = path_match.group(1) if path_match else "this file"
    if not _ANSWER_MODE.search(last) and _QUESTION_MODE.search(last):
        wanted = _N_QUESTIONS.search(last)
        n = max(1, min(10, int(wanted.group(1)) if wanted else 2))
        offset = int(digest[:8], 16)
        questions = []
        examples = _EXAMPLE_LINE.findall(last)  # the planned kinds' example questions, in order
        for i in range(n):
            form = _QUESTION_FORMS[(offset + i) % len(_QUESTION_FORMS)]
            if i < len(examples):
                form = "For `{a}` in {path}: " + examples[i].replace("{", "{{").replace("}", "}}")
            a = idents[i % len(idents)]
            b = idents[(i + 1) % len(idents)] if len(idents) > 1 else "the rest of the module"
            questions.append(form.format(a=a, b=b, path=path))
        return json.dumps(questions)
    asked = prompt_identifiers(last) or idents
    names = ", ".join(f"`{n}`" for n in dict.fromkeys(asked[:3] + idents[:2]))
    first = asked[0]
    return (
        f"In {path}, {names} work together. `{first}` takes its inputs, validates them and returns "
        f"the computed result to the caller. For example:\n\n```\nresult = {first}(...)\n```\n\n"
        f"Each step is visible in the code shown (reference {digest[:8]})."
    )


def _word_count(text: str) -> int:
    return len(text.split())


# --------------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    owner: FaultServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is expected here (timeouts, cancellation): log, do not print."""
        logger.debug("fault server: connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30  # idle keep-alive connections close after this
    disable_nagle_algorithm = True  # TCP_NODELAY: no 40 ms Nagle/delayed-ACK stall per response
    wbufsize = 1 << 16  # headers and body leave in one write (flushed in _send)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fault server: " + format, *args)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(
        self, status: int, payload: bytes, headers: dict[str, str] | None = None, content_length: int | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload) if content_length is None else content_length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.finishing()
        self.wfile.write(payload)
        self.wfile.flush()

    def finishing(self) -> None:
        """Called just before the last bytes of a reply leave (the client may act on them at once)."""
        callback = getattr(self, "on_finishing", None)
        if callback is not None:
            callback()

    def do_GET(self) -> None:
        owner = self.server.owner
        owner._record(self, None)
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            entry: dict[str, Any] = {"id": owner.model, "object": "model"}
            if owner.owned_by is not None:
                entry["owned_by"] = owner.owned_by
            if owner.context_window is not None:
                entry["max_model_len"] = owner.context_window
            self._send(200, json.dumps({"object": "list", "data": [entry]}).encode())
        elif path == "/health":
            self._send(200, b'{"status": "ok"}')
        else:
            self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self) -> None:
        owner = self.server.owner
        raw = self._read_body()
        path = self.path.split("?", 1)[0].rstrip("/")
        if path not in ("/v1/chat/completions", "/chat/completions"):
            owner._record(self, None)
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        record = owner._record(self, body if isinstance(body, dict) else None)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            record.status = 400
            self._send(400, b'{"error": {"message": "body must be a JSON object with messages"}}')
            return
        owner._chat(self, record, body)


class FaultServer:
    """OpenAI-compatible loopback server with programmable faults; a context manager."""

    def __init__(
        self,
        faults: Iterable[Fault] = (),
        *,
        latency: float = 0.0,
        capacity: int | None = None,
        model: str = "fault-server-model",
        context_window: int | None = 4096,
        include_usage: bool = True,
        responder: Responder | None = None,
        max_lifetime: float = 600.0,
        max_delay: float = 120.0,
        degradation: float = 0.0,
        streaming: bool = True,
        stream_chunks: int = 8,
        owned_by: str | None = "cicdllm-fault-server",
        prefill_share: float = 0.5,
    ) -> None:
        if latency < 0:
            raise ValueError(f"latency must be >= 0, got {latency}")
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be >= 1 or None, got {capacity}")
        self.faults = list(faults)
        self._remaining: list[int | None] = [f.times for f in self.faults]
        self.latency = latency
        self.capacity = capacity
        self.model = model
        self.context_window = context_window
        self.include_usage = include_usage
        self.responder: Responder = responder or default_responder
        self.max_lifetime = max_lifetime
        self.max_delay = max_delay
        if degradation < 0:
            raise ValueError(f"degradation must be >= 0, got {degradation}")
        self.degradation = degradation
        self.streaming = streaming
        self.stream_chunks = max(1, stream_chunks)
        self.owned_by = owned_by
        self._waiting = 0
        self._pending: dict[RequestRecord, socket.socket] = {}
        if not 0 < prefill_share <= 1:
            raise ValueError(f"prefill_share must be in (0, 1], got {prefill_share}")
        self.prefill_share = prefill_share
        self.records: list[RequestRecord] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(capacity) if capacity else None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FaultServer:
        """Bind a free port on 127.0.0.1 and serve in a background thread."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-server", daemon=True
        )
        self._thread.start()
        self._timer = threading.Timer(self.max_lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers and close the socket (idempotent)."""
        self._stop.set()
        server, self._server = self._server, None
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ introspection

    @property
    def port(self) -> int:
        """The bound port."""
        if self._server is None:
            raise RuntimeError("FaultServer is not running")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """OpenAI API root, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_records(self) -> list[RequestRecord]:
        """Records of chat-completion requests, in arrival order."""
        with self._lock:
            return [r for r in self.records if r.body is not None or r.path.endswith("completions")]

    @property
    def request_count(self) -> int:
        """How many chat-completion requests arrived (including faulted ones)."""
        return len(self.chat_records)

    def faults_remaining(self) -> list[int | None]:
        """Uses left per fault (None = unlimited)."""
        with self._lock:
            return list(self._remaining)

    def add_fault(self, fault: Fault) -> None:
        """Append a fault while running."""
        with self._lock:
            self.faults.append(fault)
            self._remaining.append(fault.times)

    def clear_faults(self) -> None:
        """Remove every pending fault."""
        with self._lock:
            self.faults.clear()
            self._remaining.clear()

    # ------------------------------------------------------------------ handling

    def _record(self, handler: _Handler, body: dict[str, Any] | None) -> RequestRecord:
        for pending, connection in list(self._pending.items()):  # closed before this one arrived?
            if pending.client_gone_at is None and _peer_closed(connection):
                pending.client_gone_at = time.monotonic()
        with self._lock:
            record = RequestRecord(
                index=len(self.records),
                method=handler.command,
                path=handler.path,
                received_at=time.monotonic(),
                headers={k: v for k, v in handler.headers.items()},
                client_port=int(handler.client_address[1]),
                body=body,
            )
            self.records.append(record)
            return record

    def _take_fault(self, body: dict[str, Any]) -> Fault | None:
        text = _messages_text(body)
        with self._lock:
            for i, fault in enumerate(self.faults):
                left = self._remaining[i]
                if left == 0:
                    continue
                if fault.match is not None and fault.match not in text:
                    continue
                if left is not None:
                    self._remaining[i] = left - 1
                return fault
        return None

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        text = self.responder(body)
        finish = "stop"
        max_tokens = body.get("max_tokens")
        words = text.split(" ")
        if isinstance(max_tokens, int) and 0 < max_tokens < len(words):
            text = " ".join(words[:max_tokens])
            finish = "length"
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]
        response: dict[str, Any] = {
            "id": f"chatcmpl-{digest}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        }
        if self.include_usage:
            prompt = _word_count(_messages_text(body)) + 3 * len(body.get("messages", []))
            completion = _word_count(text)
            response["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        return response

    def _chat(self, handler: _Handler, record: RequestRecord, body: dict[str, Any]) -> None:
        fault = self._take_fault(body)
        record.fault = fault.kind if fault else None
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        counted = [True]

        def leave() -> None:  # once: before the reply's last bytes, or at the end
            with self._lock:
                if counted[0]:
                    counted[0] = False
                    self._in_flight -= 1

        handler.on_finishing = leave  # type: ignore[attr-defined]
        self._pending[record] = handler.connection
        acquired = False
        try:
            if self._slots is not None:
                with self._lock:
                    self._waiting += 1
                try:
                    while not self._stop.is_set():
                        if self._slots.acquire(timeout=0.05):
                            acquired = True
                            break
                        self._note_gone(handler, record)
                finally:
                    with self._lock:
                        self._waiting -= 1
            if self._stop.is_set():
                return
            record.started_at = time.monotonic()
            with self._lock:
                service = self.latency * (1.0 + self.degradation * min(self._waiting, 8))
            if self.streaming and body.get("stream") is True and (fault is None or fault.kind == "slow"):
                self._stream(handler, record, body, fault, service)
                return
            if self._work(handler, record, service):
                return
            self._respond(handler, record, body, fault)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            record.abandoned = True
            handler.close_connection = True
        finally:
            record.finished_at = time.monotonic()
            if acquired and self._slots is not None:
                self._slots.release()
            leave()
            handler.on_finishing = None  # type: ignore[attr-defined]
            self._pending.pop(record, None)

    def _work(self, handler: _Handler, record: RequestRecord, seconds: float) -> bool:
        """Spend ``seconds`` on a request, noting when its client goes away; True if stopping."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._stop.wait(min(left, 0.05)):
                return True
            self._note_gone(handler, record)
        return self._stop.is_set()

    @staticmethod
    def _note_gone(handler: _Handler, record: RequestRecord) -> None:
        if record.client_gone_at is None and _peer_closed(handler.connection):
            record.client_gone_at = time.monotonic()

    def _stream(
        self, handler: _Handler, record: RequestRecord, body: dict[str, Any], fault: Fault | None, service: float
    ) -> None:
        """Server-sent events: first token after half of ``service``, the rest over the other half."""
        if fault is not None and self._work(handler, record, min(fault.delay, self.max_delay)):
            return
        completion = self._completion(body)
        words = completion["choices"][0]["message"]["content"].split(" ")
        n = min(self.stream_chunks, len(words))
        size = -(-len(words) // n)
        pieces = [
            " ".join(words[i : i + size]) + (" " if i + size < len(words) else "") for i in range(0, len(words), size)
        ]
        if self._work(handler, record, service * self.prefill_share):
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        record.status = 200

        def event(data: str) -> None:
            payload = f"data: {data}\n\n".encode()
            handler.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            handler.wfile.flush()

        base = {"id": completion["id"], "object": "chat.completion.chunk", "created": 0, "model": completion["model"]}
        gap = service * (1 - self.prefill_share) / max(1, len(pieces) - 1)
        for i, piece in enumerate(pieces):
            if i and self._work(handler, record, gap):
                return
            last = i == len(pieces) - 1
            choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
            if last:
                choice["finish_reason"] = completion["choices"][0]["finish_reason"]
            event(json.dumps({**base, "choices": [choice]}))
        options = body.get("stream_options")
        if "usage" in completion and isinstance(options, dict) and options.get("include_usage"):
            event(json.dumps({**base, "choices": [], "usage": completion["usage"]}))
        handler.finishing()
        event("[DONE]")
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()

    def _respond(self, handler: _Handler, record: RequestRecord, body: dict[str, Any], fault: Fault | None) -> None:
        if fault is None or fault.kind == "slow":
            if fault is not None and self._work(handler, record, min(fault.delay, self.max_delay)):
                return
            record.status = 200
            handler._send(200, json.dumps(self._completion(body)).encode())
            return
        if fault.kind == "drop":
            handler.close_connection = True
            handler.finishing()
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault.kind == "malformed":
            record.status = 200
            handler._send(200, b"<html>upstream error: this is not JSON {")
            return
        if fault.kind == "truncated":
            full = json.dumps(self._completion(body)).encode()
            half = full[: len(full) // 2]
            record.status = 200
            handler._send(200, half)
            return
        if fault.kind == "context_overflow":
            message = CONTEXT_OVERFLOW_MESSAGE.format(
                ctx=self.context_window or 2048, req=_word_count(_messages_text(body)) * 10
            )
            payload = {
                "error": {"message": message, "type": "invalid_request_error", "code": "context_length_exceeded"}
            }
            record.status = 400
            handler._send(400, json.dumps(payload).encode())
            return
        # "http"
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        payload_bytes = (
            fault.body.encode()
            if fault.body is not None
            else json.dumps(
                {"error": {"message": f"injected HTTP {fault.status}", "type": "server_error", "code": fault.status}}
            ).encode()
        )
        record.status = fault.status
        handler._send(fault.status, payload_bytes, headers)


def _peer_closed(sock: socket.socket) -> bool:
    """The client closed its end (readable with nothing to read: no pipelined request here)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


@dataclass
class ServerStats:
    """A summary of what a :class:`FaultServer` saw (for benchmark reports)."""

    requests: int
    max_in_flight: int
    faults: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, server: FaultServer) -> ServerStats:
        """Summarise ``server``'s records."""
        counts: dict[str, int] = {}
        for record in server.chat_records:
            if record.fault:
                counts[record.fault] = counts.get(record.fault, 0) + 1
        return cls(requests=server.request_count, max_in_flight=server.max_in_flight, faults=counts)


def _serve_in_child(conn: Any, options: dict[str, Any]) -> None:
    """Child-process body of :class:`FaultServerProcess` (module level so spawn can import it)."""
    with FaultServer(**options) as server:
        conn.send(server.port)
        conn.poll(options.get("max_lifetime", 600.0))  # until the parent asks to stop
        conn.send(
            {
                "request_count": server.request_count,
                "max_in_flight": server.max_in_flight,
                "abandoned": sum(r.abandoned for r in server.chat_records),
            }
        )
    conn.close()


class FaultServerProcess:
    """A :class:`FaultServer` in its own (spawned) process, so it shares no GIL with the client.

    For benchmarks: only picklable options (faults, latency, capacity, a module-level
    responder...). ``stats`` (request_count, max_in_flight) is filled in by :meth:`stop`.
    """

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.stats: dict[str, int] = {}
        self._process: Any = None
        self._conn: Any = None
        self.port = 0

    def start(self, timeout: float = 60.0) -> FaultServerProcess:
        """Spawn the server process and wait until it listens."""
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve_in_child, args=(child, self.options), daemon=True)
        self._process.start()
        child.close()
        if not parent.poll(timeout):
            self._process.kill()
            raise RuntimeError(f"fault server process did not start within {timeout:g}s")
        self.port = int(parent.recv())
        self._conn = parent
        return self

    @property
    def base_url(self) -> str:
        """OpenAI API root of the child server."""
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> dict[str, int]:
        """Stop the child and return its stats (idempotent)."""
        if self._conn is not None:
            try:
                self._conn.send("stop")
                if self._conn.poll(30):
                    self.stats = dict(self._conn.recv())
            except (EOFError, OSError, BrokenPipeError):
                pass
            self._conn.close()
            self._conn = None
        if self._process is not None:
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout=5)
            self._process = None
        return self.stats

    def __enter__(self) -> FaultServerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
