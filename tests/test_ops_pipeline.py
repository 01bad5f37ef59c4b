"""`cicdllm run` over the whole pipeline: real git repos, every real asset, the dataset step,
and generation through the OpenAI backend against a real loopback server (FaultServer).

The CLI builds the code location for the current config (the LLM resource follows
``llm.backend``), so each test's project config applies, as for a user.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks.fault_server import FaultServer
from cicdllm_assets.cli.main import cli
from tests.generation_support import SAMPLE_FILES, openai_config
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture

pytestmark = pytest.mark.slow

PIPELINE = ["repositories", "source_files", "code_chunks", "questions", "answers", "qa_pairs", "training_dataset"]


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(capacity=8) as srv:
        yield srv


def _run(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["run", *args, "--json"], catch_exceptions=False)
    assert result.stdout.strip().startswith("{"), result.stderr[-3000:]
    return result.exit_code, json.loads(result.stdout)


def test_full_pipeline_run_then_noop_then_one_repo_moves(
    project: Path,
    make_git_repo,
    server: FaultServer,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    settings = openai_config(
        project,
        server.base_url,
        tiny_model_dir,
        generation={"themes": ["code_explanation"], "questions_per_chunk": 1, "max_chunks_per_repo": 3},
    )
    mit = "MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining a copy\n"
    calc = make_git_repo("calc", {**SAMPLE_FILES, "LICENSE": mit})
    other = make_git_repo("other", {"tool.py": "def tool(x):\n    return x + 1\n", "LICENSE": mit})
    (project / "repos.txt").write_text(f"{calc.path}\n{other.path}\n", encoding="utf-8")

    code, data = _run()
    assert code == 0, data
    assert data["selection"] == PIPELINE
    repos = {r["name"]: r for r in data["repos"]}
    assert {name: r["status"] for name, r in repos.items()} == {"local-calc": "done", "local-other": "done"}
    assert set(repos["local-calc"]["rows"]) == set(PIPELINE[:-1])
    assert repos["local-calc"]["rows"]["questions"] >= 1
    assert data["dataset"]["status"] == "done"
    assert "training_dataset" in data["dataset"]["rows"]
    calls = len(server.chat_records)
    assert calls >= 2  # questions and answers went through the server
    assert settings.export_dir.is_dir() and any(settings.export_dir.iterdir())

    # Nothing changed: every repo is unchanged and the LLM is not called again.
    code, data = _run()
    assert code == 0
    assert {r["status"] for r in data["repos"]} == {"unchanged"}
    assert len(server.chat_records) == calls

    # One repo moves: only its new chunk is generated; the other stays unchanged.
    calc.write("calc/mul.py", 'def mul(a, b):\n    """Multiply."""\n    return a * b\n')
    head = calc.commit("mul")
    code, data = _run("--repo", "local-calc", "--repo", "local-other")
    repos = {r["name"]: r for r in data["repos"]}
    assert code == 0
    assert repos["local-calc"]["status"] == "done" and repos["local-calc"]["head_commit"] == head
    assert repos["local-other"]["status"] == "unchanged"
    assert data["dataset"]["status"] in ("done", "unchanged")


def test_dataset_step_is_skipped_when_no_repo_succeeded(project: Path, make_git_repo, tmp_path: Path) -> None:
    import shutil

    broken = make_git_repo("gone", {"a.py": "a = 1\n"})
    (project / "repos.txt").write_text(f"{broken.path}\n", encoding="utf-8")
    shutil.rmtree(broken.path / ".git")
    code, data = _run("--select", "key:repositories or key:training_dataset")
    assert code == 1
    assert data["repos"][0]["status"] == "failed"
    assert data["dataset"] == {**data["dataset"], "status": "not_run", "reason": "no repo succeeded"}


def test_mlx_model_is_loaded_once_for_all_repos_of_a_run(
    project: Path,
    make_git_repo,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    from cicdllm_assets.llm import mlx_backend
    from tests.generation_support import write_project_config

    write_project_config(
        project,
        llm={"backend": "mlx", "model": str(tiny_model_dir)},
        generation={
            "themes": ["code_explanation"],
            "questions_per_chunk": 1,
            "max_chunks_per_repo": 1,
            "question_max_tokens": 16,
            "answer_max_tokens": 16,
            "max_attempts": 1,
        },
    )
    first = make_git_repo("first", {"f.py": "def f():\n    return 1\n"})
    second = make_git_repo("second", {"s.py": "def s():\n    return 2\n"})
    (project / "repos.txt").write_text(f"{first.path}\n{second.path}\n", encoding="utf-8")
    mlx_backend.release_models()
    loads_before = mlx_backend.load_count

    code, data = _run("--select", "key:repositories+ or key:questions")
    assert code == 0, data
    # The random model's 16 tokens never parse as questions: each repo's one item is missing.
    assert [(r["status"], r["missing_items"]) for r in data["repos"]] == [("incomplete", 1), ("incomplete", 1)]
    assert all("questions" in r["rows"] for r in data["repos"])
    assert mlx_backend.load_count - loads_before == 1  # one load served both repos' runs
    assert mlx_backend._models == {}  # and it was freed when the command ended
