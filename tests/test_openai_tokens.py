"""Token counting with tokenizer.json + chat template, context window discovery, header parsing."""

from __future__ import annotations

import email.utils
import json
import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from benchmarks.fault_server import FaultServer
from cicdllm_assets.config import load_settings
from cicdllm_assets.llm.base import ChatMessage
from cicdllm_assets.llm.openai_backend import (
    DEFAULT_CONTEXT_WINDOW,
    OpenAIBackend,
    find_context_length,
    is_context_overflow,
    parse_retry_after,
)
from cicdllm_assets.llm.tokenizer_counter import (
    MESSAGE_OVERHEAD_TOKENS,
    REPLY_PRIMER_TOKENS,
    TokenCounter,
    TokenizerLoadError,
)
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture
from tests.openai_helpers import make_backend, make_request

MESSAGES = (
    ChatMessage("system", "You are a helpful assistant."),
    ChatMessage("user", "def add(a, b):\n    return a + b\n"),
    ChatMessage("user", "What does this function return?"),
)


def chatml(messages: tuple[ChatMessage, ...]) -> str:
    body = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n"


def test_counts_match_tokenizer_and_chat_template(tiny_model_dir: Path) -> None:  # noqa: F811
    counter = TokenCounter(tiny_model_dir)
    raw = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    text = "class Parser:\n    def parse(self, text):\n        return text.split()\n"
    assert counter.count(text) == len(raw.encode(text, add_special_tokens=False).ids)
    assert counter.count("") == 0
    assert counter.has_chat_template
    assert counter.render_prompt(MESSAGES) == chatml(MESSAGES)
    expected = len(raw.encode(chatml(MESSAGES), add_special_tokens=False).ids)
    assert counter.count_prompt_tokens(MESSAGES) == expected
    # special tokens are single tokens, so the template adds a small exact overhead
    assert counter.count_prompt_tokens(MESSAGES) > sum(counter.count(m.content) for m in MESSAGES)


def test_without_template_uses_documented_overhead(tiny_model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    shutil.copy(tiny_model_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    counter = TokenCounter(tmp_path / "tokenizer.json")
    assert not counter.has_chat_template
    content = sum(counter.count(m.content) for m in MESSAGES)
    expected = content + MESSAGE_OVERHEAD_TOKENS * len(MESSAGES) + REPLY_PRIMER_TOKENS
    assert counter.count_prompt_tokens(MESSAGES) == expected


def test_named_template_list_is_supported(tiny_model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    shutil.copy(tiny_model_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    template = config["chat_template"]
    config["chat_template"] = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": template}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    counter = TokenCounter(tmp_path)
    assert counter.render_prompt(MESSAGES) == chatml(MESSAGES)


def test_missing_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TokenizerLoadError, match=r"no tokenizer\.json"):
        TokenCounter(tmp_path)


def _write_config(project: Path, lines: str) -> None:
    (project / "cicdllm.yaml").write_text(
        "storage:\n  data_dir: data\n  dagster_home: dagster_home\n" + lines, encoding="utf-8"
    )


def test_backend_from_model_paths_counts_with_configured_tokenizer(
    project: Path,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    _write_config(
        project,
        f"llm:\n  backend: openai\n  model: served-model\n  context_window: 2048\n"
        f"  openai:\n    base_url: http://127.0.0.1:9/v1\n    tokenizer: {tiny_model_dir}\n",
    )
    backend = OpenAIBackend.from_model_paths(load_settings().model_paths)
    try:
        assert backend.model_id == "served-model"
        assert backend.context_window == 2048  # from config: no request needed
        raw = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
        assert backend.count_prompt_tokens(MESSAGES) == len(raw.encode(chatml(MESSAGES), add_special_tokens=False).ids)
        assert backend.count_tokens("return a + b") == len(raw.encode("return a + b", add_special_tokens=False).ids)
    finally:
        backend.close()


def test_backend_without_tokenizer_uses_model_tokenizer(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    _write_config(project, f"llm:\n  backend: openai\n  model: {tiny_model_dir}\n")
    backend = OpenAIBackend.from_model_paths(load_settings().model_paths)
    try:
        assert backend.model_id == str(tiny_model_dir)
        assert backend.count_tokens("def add") > 0
    finally:
        backend.close()


def test_estimates_usage_when_server_omits_it(tiny_model_dir: Path) -> None:  # noqa: F811
    counter = TokenCounter(tiny_model_dir)
    with FaultServer(include_usage=False) as srv, make_backend(srv.base_url, token_counter=counter) as backend:
        request = make_request("k")
        [result] = backend.generate([request])
        assert result.ok
        assert result.prompt_tokens == counter.count_prompt_tokens(request.messages)
        assert result.completion_tokens == counter.count(result.text)
        assert result.extra["usage_estimated"] is True


def test_context_window_from_server_models() -> None:
    with FaultServer(context_window=32768) as srv, make_backend(srv.base_url) as backend:
        assert backend.context_window == 32768
        assert backend.context_window == 32768
        assert [r.path for r in srv.records] == ["/v1/models"]  # cached after the first query


def test_context_window_config_wins_over_server() -> None:
    with FaultServer(context_window=32768) as srv, make_backend(srv.base_url, context_window=1024) as backend:
        assert backend.context_window == 1024
        assert srv.records == []


def test_context_window_default_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with FaultServer(context_window=None) as srv, make_backend(srv.base_url) as backend:
        assert backend.context_window == DEFAULT_CONTEXT_WINDOW
    assert "llm.context_window" in caplog.text


def test_context_window_unreachable_server_defaults(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with FaultServer() as srv:
        url = srv.base_url
    with make_backend(url) as backend:
        assert backend.context_window == DEFAULT_CONTEXT_WINDOW
    assert "could not read" in caplog.text


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"data": [{"id": "m", "max_model_len": 4096}]}, 4096),  # vLLM
        ({"data": [{"id": "m", "meta": {"n_ctx_train": 8192, "n_vocab": 49152}}]}, 8192),  # llama.cpp
        ({"data": [{"id": "other", "context_length": 1}, {"id": "m", "context_length": 16384}]}, 16384),
        ({"data": [{"id": "m", "max_context_length": 2048}]}, 2048),  # LM Studio
        ({"data": [{"id": "m"}]}, None),  # mlx_lm.server, Ollama
        ({"object": "list"}, None),
        ([], None),
    ],
)
def test_find_context_length(payload: object, expected: int | None) -> None:
    assert find_context_length(payload, "m") == expected


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    future = email.utils.format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert parse_retry_after(future, now=now) == pytest.approx(7.0)
    past = email.utils.format_datetime(now - timedelta(seconds=7), usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (400, "This model's maximum context length is 2048 tokens. However, you requested 3000 tokens", True),
        (400, "the request exceeds the available context size, try increasing it", True),  # llama.cpp
        (400, "context_length_exceeded", True),
        (400, "input length exceeds the context length", True),  # Ollama
        (400, "temperature must be between 0 and 2", False),
        (500, "maximum context length", False),
    ],
)
def test_is_context_overflow(status: int, message: str, expected: bool) -> None:
    assert is_context_overflow(status, message) is expected
