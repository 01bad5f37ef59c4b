"""The OpenAI backend against a real ``mlx_lm.server`` subprocess serving the tiny random model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cicdllm_assets.config import load_settings
from cicdllm_assets.llm.base import ChatMessage, GenerationRequest
from cicdllm_assets.llm.models.paths import EMBEDDED_MODEL_NAME
from cicdllm_assets.llm.openai_backend import DEFAULT_CONTEXT_WINDOW, OpenAIBackend, OpenAIBackendConfig
from cicdllm_assets.llm.tokenizer_counter import TokenCounter
from tests.llm_fixtures import serve_mlx_model, tiny_model_dir  # noqa: F401 - session fixture


@pytest.fixture
def mlx_server(tiny_model_dir: Path, tmp_path: Path) -> Iterator[str]:  # noqa: F811
    """mlx_lm.server on a free loopback port serving the tiny model; yields its /v1 URL."""
    with serve_mlx_model(str(tiny_model_dir), tmp_path) as base_url:
        yield base_url


@pytest.mark.slow
def test_backend_against_real_mlx_lm_server(mlx_server: str, tiny_model_dir: Path) -> None:  # noqa: F811
    counter = TokenCounter(tiny_model_dir)
    config = OpenAIBackendConfig(
        base_url=mlx_server,
        model=str(tiny_model_dir),  # the same string as --model: the server keeps the loaded model
        max_concurrency=2,
        timeout_seconds=120.0,
        max_retries=2,
        backoff_base_seconds=0.1,
        context_window=2048,
    )
    messages = (
        ChatMessage("system", "You are a helpful assistant that writes questions and answers about code."),
        ChatMessage("user", "def add(a, b):\n    return a + b\n"),
    )
    requests = [
        GenerationRequest(
            key=f"k{i}",
            messages=(*messages, ChatMessage("user", f"Question {i}: What does this function return?")),
            max_tokens=8,
            temperature=0.0,
            seed=i,
            prefix_messages=2,
        )
        for i in range(3)
    ]
    with OpenAIBackend(config, token_counter=counter) as backend:
        results = {r.key: r for r in backend.generate(requests)}
    assert sorted(results) == ["k0", "k1", "k2"]
    for request in requests:
        result = results[request.key]
        assert result.ok, result.error
        assert "usage_estimated" not in result.extra  # the server reported usage
        assert 1 <= result.completion_tokens <= 8
        assert result.finish_reason in {"stop", "length"}
        # our chat-template count is exactly what the server tokenised
        assert result.prompt_tokens == counter.count_prompt_tokens(request.messages)


@pytest.mark.slow
def test_embedded_alias_uses_the_servers_default_model(
    mlx_server: str,
    tiny_model_dir: Path,  # noqa: F811
    project: Path,
) -> None:
    (project / "cicdllm.yaml").write_text(
        "storage:\n  data_dir: data\n  dagster_home: dagster_home\n"
        "llm:\n  backend: openai\n  model: embedded\n"
        f"  openai:\n    base_url: {mlx_server}\n    tokenizer: {tiny_model_dir}\n    max_concurrency: 2\n",
        encoding="utf-8",
    )
    backend = OpenAIBackend.from_model_paths(load_settings().model_paths)
    try:
        assert backend.model_id == EMBEDDED_MODEL_NAME
        request = GenerationRequest(
            key="k", messages=(ChatMessage("user", "def add(a, b): return a + b"),), max_tokens=4, temperature=0.0
        )
        [result] = backend.generate([request])
        assert result.ok, result.error
        assert result.prompt_tokens == backend.count_prompt_tokens(request.messages)
        # mlx_lm.server's /v1/models has no context length: the documented default applies
        assert backend.context_window == DEFAULT_CONTEXT_WINDOW
    finally:
        backend.close()
