"""Context fitting with real token counts (the tiny model's tokenizer and chat template)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cicdllm_assets.generation.chunks import Chunk
from cicdllm_assets.generation.context import TRIM_MARKER, ContextOverflowError, fit_prompt
from cicdllm_assets.generation.prompts import PromptManager
from cicdllm_assets.llm.openai_backend import OpenAIBackend, OpenAIBackendConfig
from tests.generation_support import PROMPTS_SRC
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture

CODE = "\n".join(f"def function_{i}(value):\n    return value * {i} + len(str(value))" for i in range(48))
CHUNK = Chunk(
    repo="r", chunk_key="k", path="big.py", start_line=1, end_line=80, text=CODE, language="python", symbol="function_0"
)


@pytest.fixture
def make_backend(tiny_model_dir: Path) -> Iterator[object]:  # noqa: F811
    made: list[OpenAIBackend] = []

    def factory(window: int) -> OpenAIBackend:
        backend = OpenAIBackend(
            OpenAIBackendConfig(
                base_url="http://127.0.0.1:9/v1",
                model="m",
                context_window=window,
                tokenizer_path=tiny_model_dir / "tokenizer.json",
            )
        )
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.close()


def _build():
    theme = PromptManager(PROMPTS_SRC).theme("code_explanation")
    return theme.answer_builder(CHUNK, "What does function_0 return for a string?")


def test_fits_without_trimming(make_backend) -> None:
    backend = make_backend(100_000)
    fitted = fit_prompt(backend, _build(), CODE, 4096)
    assert not fitted.trimmed and fitted.max_tokens == 4096
    assert fitted.prompt_tokens == backend.count_prompt_tokens(fitted.messages)
    assert CODE in fitted.messages[1].content


@pytest.mark.parametrize("window", [1024, 1500, 2048])
def test_trims_by_real_tokens_and_caps_completion(make_backend, window: int) -> None:
    backend = make_backend(window)
    build = _build()
    full = backend.count_prompt_tokens(build(CODE))
    assert full > window  # the chunk alone does not fit
    fitted = fit_prompt(backend, build, CODE, 4096)
    assert fitted.trimmed
    assert fitted.max_tokens <= window // 2  # the prompt keeps at least half the window
    prompt = backend.count_prompt_tokens(fitted.messages)
    assert prompt == fitted.prompt_tokens and prompt + fitted.max_tokens <= window
    content = fitted.messages[1].content
    assert TRIM_MARKER.strip() in content
    kept = content.split("```python\n", 1)[1].split(TRIM_MARKER)[0]
    assert CODE.startswith(kept) and kept.endswith(("value))", ":"))  # whole lines kept
    # one more line would not have fitted
    n = kept.count("\n") + 1
    longer = "\n".join(CODE.split("\n")[: n + 1]) + TRIM_MARKER
    assert backend.count_prompt_tokens(build(longer)) + fitted.max_tokens > window


def test_small_desired_budget_keeps_more_code(make_backend) -> None:
    backend = make_backend(2048)
    small = fit_prompt(backend, _build(), CODE, 64)
    large = fit_prompt(backend, _build(), CODE, 4096)
    assert small.max_tokens == 64 and small.code_chars > large.code_chars


def test_single_long_line_is_trimmed_by_characters(make_backend) -> None:
    backend = make_backend(1024)
    line = "x = [" + ", ".join(str(i) for i in range(3000)) + "]"
    fitted = fit_prompt(backend, _build(), line, 200)
    assert fitted.trimmed and 0 < fitted.code_chars < len(line)
    assert backend.count_prompt_tokens(fitted.messages) + fitted.max_tokens <= 1024


def test_overflow_when_even_an_empty_chunk_does_not_fit(make_backend) -> None:
    backend = make_backend(256)
    with pytest.raises(ContextOverflowError, match="context window of 256"):
        fit_prompt(backend, _build(), CODE, 64)
