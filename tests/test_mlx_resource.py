"""MLXResource: settings-driven backend, one model load per process, release at teardown."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from dagster import DagsterInstance, asset, materialize

from cicdllm_assets.llm import mlx_backend
from cicdllm_assets.llm.base import ChatMessage, GenerationRequest
from cicdllm_assets.llm.models.paths import ModelNotPreparedError
from cicdllm_assets.llm.openblas import ensure_openblas
from cicdllm_assets.resources.llm.mlx_resource import MLXResource
from tests.llm_fixtures import tiny_model_dir

__all__ = ["tiny_model_dir"]


def _configure(project: Path, model: Path, extra: str = "") -> None:
    config = project / "cicdllm.yaml"
    config.write_text(
        config.read_text() + f"llm:\n  model: {model}\n  context_window: 1024\ngeneration:\n  batch_size: 3\n{extra}",
        encoding="utf-8",
    )


def test_backend_follows_settings(project: Path, tiny_model_dir: Path) -> None:
    _configure(project, tiny_model_dir)
    resource = MLXResource()
    backend = resource.get_backend()
    assert backend is resource.get_backend()
    assert backend.batch_size == 3
    assert backend.context_window == 1024
    assert backend.model_id.startswith("mlx:model@")
    resource.close()


def test_embedded_model_missing_is_a_clear_error(project: Path) -> None:
    with pytest.raises(ModelNotPreparedError, match="cicdllm model prepare"):
        MLXResource().get_backend()


@asset
def _questions(llm: MLXResource) -> pa.Table:
    request = GenerationRequest(key="q", messages=(ChatMessage("user", "def f(): pass"),), max_tokens=3)
    results = list(llm.get_backend().generate([request]))
    return pa.table({"ok": [r.ok for r in results]})


@asset
def _answers(llm: MLXResource, _questions: pa.Table) -> pa.Table:
    request = GenerationRequest(key="a", messages=(ChatMessage("user", "def g(): pass"),), max_tokens=3)
    results = list(llm.get_backend().generate([request]))
    return pa.table({"ok": [r.ok for r in results]})


def test_model_loaded_once_per_run_and_released(project: Path, tiny_model_dir: Path) -> None:
    _configure(project, tiny_model_dir)
    mlx_backend.release_models()
    before = mlx_backend.load_count
    result = materialize(
        [_questions, _answers],
        resources={"llm": MLXResource()},
        instance=DagsterInstance.ephemeral(),
    )
    assert result.success
    assert result.output_for_node("_answers").column("ok").to_pylist() == [True]
    assert mlx_backend.load_count == before + 1
    assert str(tiny_model_dir) not in mlx_backend._models  # released at teardown


def test_openblas_is_loaded_before_mlx() -> None:
    import sys

    from cicdllm_assets.llm import openblas

    path = ensure_openblas()
    if not sys.platform.startswith("linux") or openblas.find_openblas() is None:
        pytest.skip("OpenBLAS applies to Linux with cmeel-openblas installed")
    assert path is not None and Path(path).name.startswith("libopenblas")
    assert openblas.matmul_gflops(128, 2) > 0
