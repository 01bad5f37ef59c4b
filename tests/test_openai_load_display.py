"""The adaptive limit and first-token latency reach the displays: the generation run writes them
to the state store, ``cicdllm run``'s progress table and the viewer (status + TUI) show them, the
asset metadata carries them."""

from __future__ import annotations

from pathlib import Path

from dagster import DagsterInstance
from rich.console import Console

from benchmarks.fault_server import FaultServer
from cicdllm_assets.resources.llm.openai_resource import OpenAIResource
from cicdllm_assets.runner.progress import read_loads, read_progress, render_progress
from cicdllm_assets.status.collect import collect_status
from cicdllm_assets.storage.state import StateStore
from cicdllm_assets.tui.widgets import resources_table
from tests.generation_support import SAMPLE_FILES, chunk_rows, openai_config, run_generation, write_chunks
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture

REPO = "acme-load"


def _text(renderable: object) -> str:
    console = Console(width=200, record=True)
    console.print(renderable)
    return console.export_text()


def test_limit_and_latency_are_shown_in_progress_viewer_and_metadata(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    with FaultServer(latency=0.05, capacity=2) as srv:
        settings = openai_config(project, srv.base_url, tiny_model_dir, openai={"max_concurrency": 6})
        write_chunks(settings, REPO, chunk_rows(REPO, SAMPLE_FILES))
        result = run_generation(REPO, OpenAIResource(), ("questions",), instance=DagsterInstance.ephemeral())
    assert result.success
    meta = result.asset_materializations_for_node("questions")[0].metadata
    limit = meta["llm_concurrency_limit"].value
    assert 1 <= limit <= 6 and meta["llm_max_concurrency"].value == 6
    assert meta["llm_first_token_latency_ms"].value > 0
    assert meta["llm_server"].value == "unknown" and meta["llm_seed_sent"].value is True

    loads = read_loads(settings.state_db)
    load = loads[(REPO, "questions")]
    assert load.max_concurrency == 6 and 1 <= load.concurrency_limit <= 6 and load.latency_ms
    progress = _text(render_progress(read_progress(settings.state_db, 0), {REPO: "done"}, loads=loads))
    assert f"limit {load.concurrency_limit}/6, {load.latency_ms:,.0f} ms" in progress

    StateStore(settings.state_db).start_stage(REPO, "questions", total=10)  # the stage is running again
    status = collect_status(settings, include_runs=False, battery_reader=lambda: None)
    assert [(x.repo, x.stage) for x in status.llm_load] == [(REPO, "questions")]
    assert status.to_dict()["llm_load"][0]["concurrency_limit"] == load.concurrency_limit
    assert f"Model server  limit {load.concurrency_limit}/6" in _text(resources_table(status))
