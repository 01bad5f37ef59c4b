"""The run summary's ``unchanged`` for the dataset step compares pairs, not summary-table rows.

A run that adds pairs without adding a (repo, split, theme) combination used to print
``training_dataset unchanged … no new items``. Real ``cicdllm run`` over a real git repo,
the OpenAI backend against a loopback FaultServer.
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


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(capacity=8) as srv:
        yield srv


def _dataset() -> tuple[str, int, int]:
    result = CliRunner().invoke(cli, ["run", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output[-3000:]
    data = json.loads(result.stdout)
    dataset = data["dataset"]
    return dataset["status"], dataset["rows"]["training_dataset"], data["repos"][0]["rows"]["qa_pairs"]


def test_dataset_status_follows_the_pairs(
    project: Path,
    make_git_repo,
    server: FaultServer,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    generation = {"themes": ["code_explanation"], "max_chunks_per_repo": 3, "questions_per_chunk": 1}
    openai_config(project, server.base_url, tiny_model_dir, generation=generation)
    mit = "MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining a copy\n"
    repo = make_git_repo("calc", {**SAMPLE_FILES, "LICENSE": mit})
    (project / "repos.txt").write_text(f"{repo.path}\n", encoding="utf-8")

    status, exported, pairs = _dataset()
    assert status == "done" and exported >= 1

    # Two questions per chunk: more pairs from the same files, splits and theme.
    openai_config(project, server.base_url, tiny_model_dir, generation={**generation, "questions_per_chunk": 2})
    status, more, more_pairs = _dataset()
    assert more_pairs > pairs and more > exported
    assert status == "done"

    status, same, same_pairs = _dataset()
    assert (status, same, same_pairs) == ("unchanged", more, more_pairs)
