"""Helpers shared by the tests/test_openai_*.py files."""

from __future__ import annotations

from typing import Any

from cicdllm_assets.resources.llm.base import ChatMessage, GenerationRequest
from cicdllm_assets.resources.llm.openai_backend import OpenAIBackend, OpenAIBackendConfig

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


def make_request(key: str, instruction: str = "Write 2 specific questions. Reply with only a JSON array.",
                 max_tokens: int = 64) -> GenerationRequest:
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
