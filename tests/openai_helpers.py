"""Helpers shared by the tests/test_openai_*.py files."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cicdllm_assets.llm.base import ChatMessage, GenerationRequest
from cicdllm_assets.llm.openai_backend import OpenAIBackend, OpenAIBackendConfig

CODE_PROMPT = (
    "Repository: demo\nFile: src/calc.py (lines 1-3, python)\nSymbol: add\n\n"
    "```python\ndef add(a, b):\n    return a + b\n```\n"
)


def make_backend(base_url: str, **overrides: Any) -> OpenAIBackend:
    """A backend with fast backoff, suitable for tests."""
    settings: dict[str, Any] = {
        "base_url": base_url,
        "model": "test-model",
        "max_concurrency": 4,
        "timeout_seconds": 10.0,
        "max_retries": 3,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        "circuit_breaker_failures": 10,
    }
    settings.update(overrides)
    token_counter = settings.pop("token_counter", None)
    return OpenAIBackend(OpenAIBackendConfig(**settings), token_counter=token_counter)


def make_request(
    key: str, instruction: str = "Write 2 specific questions. Reply with only a JSON array.", max_tokens: int = 64
) -> GenerationRequest:
    """A question-style request about a tiny code chunk."""
    return GenerationRequest(
        key=key,
        messages=(
            ChatMessage("system", "You are a careful engineer."),
            ChatMessage("user", CODE_PROMPT),
            ChatMessage("user", f"{instruction}\n[{key}]"),
        ),
        max_tokens=max_tokens,
        temperature=0.0,
        top_p=1.0,
        seed=7,
        prefix_messages=2,
    )


class RecordingProxy:
    """A TCP relay on 127.0.0.1 in front of a model server that counts the chat requests
    passing through it (and those carrying a ``seed``), whatever the client does later."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.chat_requests = 0
        self.seeded_requests = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base_url(self) -> str:
        """The proxy's OpenAI API root."""
        return f"http://127.0.0.1:{self.port}/v1"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        tail = b""
        try:
            while data := source.recv(65536):
                if count:
                    window = tail + data
                    with self._lock:
                        self.chat_requests += _new_matches(window, len(tail), b"POST /v1/chat/completions ")
                        self.seeded_requests += _new_matches(window, len(tail), b'"seed":')
                    tail = window[-64:]
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        """Stop accepting (open relays end with their connections)."""
        self._stop.set()
        self._server.close()


def _new_matches(window: bytes, seen: int, marker: bytes) -> int:
    """Occurrences of ``marker`` in ``window`` that end after its first ``seen`` bytes."""
    found, start = 0, 0
    while (i := window.find(marker, start)) != -1:
        found += i + len(marker) > seen
        start = i + 1
    return found


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(
    command: list[str], port: int, log_path: Path, env: dict[str, str] | None = None, deadline_seconds: float = 180.0
) -> Iterator[str]:
    """Start a model server (``command`` + ``--host 127.0.0.1 --port PORT``), wait until
    ``GET /v1/models`` answers, yield its ``/v1`` URL; always stop it."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + deadline_seconds
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{command[2]} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/models", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                tail = log_path.read_text()[-3000:]
                pytest.fail(f"{command[2]} did not answer within {deadline_seconds:g}s:\n{tail}")
            time.sleep(0.25)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
