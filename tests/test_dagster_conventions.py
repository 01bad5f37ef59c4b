"""Code versions follow the code and the prompt templates (the snapshot masks their digests)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cicdllm_assets.assets import _conventions
from cicdllm_assets.assets._conventions import code_version, prompt_digest, source_digest
from cicdllm_assets.generation.prompts import SHIPPED_PROMPTS_DIR


def test_prompt_digest_follows_the_configured_templates(project: Path) -> None:
    before = {kind: prompt_digest(kind) for kind in ("question", "answer")}
    shutil.copytree(SHIPPED_PROMPTS_DIR, project / "prompts")
    assert {kind: prompt_digest(kind) for kind in ("question", "answer")} == before  # same templates
    testing = project / "prompts" / "testing.yaml"
    testing.write_text(testing.read_text().replace("Write {n_questions} specific", "Write {n_questions} sharp"))
    assert prompt_digest("question") != before["question"]
    assert prompt_digest("answer") == before["answer"]  # the answer template did not change
    testing.write_text(testing.read_text().replace("Answer this testing", "Answer this unit-testing"))
    assert prompt_digest("answer") != before["answer"]


def test_source_digest_follows_the_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "pkg"
    (package / "quality").mkdir(parents=True)
    (package / "quality" / "a.py").write_text("X = 1\n")
    (package / "assets").mkdir()
    (package / "assets" / "qa.py").write_text("Y = 1\n")
    monkeypatch.setattr(_conventions, "PACKAGE_DIR", package)
    first = code_version("qa_pairs", "quality", "assets/qa.py")
    assert first.startswith("qa_pairs-s") and first == code_version("qa_pairs", "quality", "assets/qa.py")
    (package / "quality" / "a.py").write_text("X = 2\n")
    second = source_digest("quality", "assets/qa.py")
    assert f"qa_pairs-s{second}" != first
    (package / "quality" / "b.py").write_text("Z = 1\n")  # a new module of the package counts too
    assert source_digest("quality", "assets/qa.py") != second
