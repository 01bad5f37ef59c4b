"""OpenAIResource in a real Dagster materialization against the fault server."""

from pathlib import Path

import pytest
from dagster import AssetExecutionContext, DagsterInstance, MaterializeResult, asset, materialize

from benchmarks.fault_server import Fault, FaultServer
from cicdllm_assets.config import load_settings
from cicdllm_assets.llm.openai_backend import OpenAIBackend
from cicdllm_assets.resources.llm import build_llm_resource
from cicdllm_assets.resources.llm.openai_resource import OpenAIResource
from tests.openai_helpers import make_request


def _configure(project: Path, base_url: str, extra: str = "") -> Path:
    config = project / "cicdllm.yaml"
    config.write_text(
        "storage:\n  data_dir: data\n  dagster_home: dagster_home\n"
        "llm:\n  backend: openai\n  model: served\n"
        f"  openai:\n    base_url: {base_url}\n    api_key_env: TEST_LLM_KEY\n"
        "    max_concurrency: 3\n    backoff_base_seconds: 0.01\n    backoff_max_seconds: 0.05\n" + extra,
        encoding="utf-8",
    )
    return config


def test_build_llm_resource_picks_openai(project: Path) -> None:
    _configure(project, "http://127.0.0.1:9/v1")
    assert isinstance(build_llm_resource(load_settings()), OpenAIResource)


def test_resource_reads_settings_and_reuses_backend(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_LLM_KEY", "sk-from-env")
    with FaultServer() as srv:
        config = _configure(project, srv.base_url)
        resource = OpenAIResource(config_path=str(config))
        backend = resource.get_backend()
        assert isinstance(backend, OpenAIBackend)
        assert resource.get_backend() is backend
        assert backend.config.max_concurrency == 3 and backend.model_id == "served"
        [result] = backend.generate([make_request("k")])
        assert result.ok
        assert srv.chat_records[0].headers["Authorization"] == "Bearer sk-from-env"
        resource.close()
        with pytest.raises(RuntimeError, match="closed"):
            list(backend.generate([make_request("k2")]))
        assert resource.get_backend() is not backend
        resource.close()


def test_resource_in_materialize(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_LLM_KEY", raising=False)
    seen: list[OpenAIBackend] = []

    @asset
    def generated(context: AssetExecutionContext, llm: OpenAIResource) -> MaterializeResult:
        backend = llm.get_backend()
        seen.append(backend)
        results = list(backend.generate([make_request(f"k{i}") for i in range(6)]))
        context.log.info("generated %d", len(results))
        return MaterializeResult(metadata={"ok": sum(r.ok for r in results)})

    with FaultServer(faults=[Fault.http(500, times=2)], latency=0.02) as srv:
        _configure(project, srv.base_url)
        result = materialize([generated], resources={"llm": OpenAIResource()}, instance=DagsterInstance.ephemeral())
        assert result.success
        [mat] = result.asset_materializations_for_node("generated")
        assert mat.metadata["ok"].value == 6
        assert srv.request_count == 8
        assert srv.max_in_flight <= 3
        assert "Authorization" not in srv.chat_records[0].headers
    # teardown closed the backend's client and loop
    assert seen and seen[0]._loop_thread is None
