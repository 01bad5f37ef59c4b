"""The questions asset with the OpenAI backend against a real ``mlx_lm.server`` serving the embedded
SmolLM2-135M (started through the project's OpenBLAS wrapper), requests counted at a recording
proxy: every item gets a reply, no client timeout, no duplicate request, no seed (mlx_lm.server
would serve seeded requests one at a time)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

from cicdllm_assets.config import load_settings
from cicdllm_assets.llm.models.prepare import prepare_embedded_model
from cicdllm_assets.resources.llm.openai_resource import OpenAIResource
from tests.generation_support import REPO_ROOT, chunk_rows, ledger_of, openai_config, run_generation, write_chunks
from tests.openai_helpers import RecordingProxy, free_port, running_server

pytestmark = pytest.mark.slow

ITEMS = 44
SOURCE = "cicdllm_assets/llm/limiter.py"  # real code of this repository


@pytest.fixture(scope="module")
def embedded_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded SmolLM2-135M prepared (GGUF -> mlx) into a temp project."""
    root = tmp_path_factory.mktemp("embedded")
    (root / "cicdllm.yaml").write_text("storage:\n  data_dir: data\n", encoding="utf-8")
    return Path(prepare_embedded_model(load_settings(root / "cicdllm.yaml").models_dir).model_dir)


@pytest.fixture(scope="module")
def mlx_server_port(embedded_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The embedded model behind mlx_lm.server, started through the project's OpenBLAS wrapper
    (no Hugging Face cache: its /v1/models fails, as on a fresh machine)."""
    port = free_port()
    command = [sys.executable, "-m", "cicdllm_assets.llm.mlx_server", "--model", str(embedded_model)]
    with running_server(command, port, tmp_path_factory.mktemp("mlx-server") / "server.log"):
        yield port


def test_questions_against_mlx_lm_server_without_timeouts_or_duplicates(
    project: Path, embedded_model: Path, mlx_server_port: int
) -> None:
    proxy = RecordingProxy(mlx_server_port)
    try:
        settings = openai_config(
            project,
            proxy.base_url,
            embedded_model,
            context_window=2048,
            generation={
                "themes": ["code_explanation"],
                "questions_per_chunk": 1,
                "question_max_tokens": 16,
                "batch_size": ITEMS,
                "temperature": 0.0,
            },
            openai={"model": "default_model", "max_concurrency": 8, "max_retries": 3, "timeout_seconds": 60.0},
        )
        files = {SOURCE: (REPO_ROOT / SOURCE).read_text(encoding="utf-8")}
        rows = chunk_rows("limiter", files, lines_per_chunk=3)[:ITEMS]
        assert len(rows) == ITEMS
        write_chunks(settings, "limiter", rows)
        result = run_generation("limiter", OpenAIResource(), ("questions",), instance=DagsterInstance.ephemeral())
    finally:
        proxy.close()
    entries = ledger_of(settings).entries(kind="question")
    assert len(entries) == ITEMS
    # every item got the model's reply; a 135M model's reply may not parse as a question, but no
    # item failed in transport (timeout, connection, HTTP status, circuit)
    assert all(e.output for e in entries), [e.error_message for e in entries if not e.output]
    assert {e.error_category for e in entries} <= {None, "parse_error"}
    assert all(e.attempts == 1 for e in entries)
    assert ITEMS <= proxy.chat_requests <= 1.05 * ITEMS
    assert proxy.seeded_requests == 0
    assert result.success
    meta = result.asset_materializations_for_node("questions")[0].metadata
    assert meta["llm_server"].value == "mlx_lm.server"
    assert meta["llm_seed_sent"].value is False
    assert 1 <= meta["llm_concurrency_limit"].value <= 8
    print(  # the figures docs/servers.md quotes (pytest -s)
        f"mlx_lm.server: {ITEMS} items, {proxy.chat_requests} requests, limit {meta['llm_concurrency_limit'].value}/8,"
        f" first-token {meta['llm_first_token_latency_ms'].value:.0f} ms,"
        f" {meta['generate_seconds'].value:.0f} s generating"
    )
