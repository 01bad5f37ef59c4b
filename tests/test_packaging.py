"""A wheel built from the checkout, installed in a fresh venv, runs the pipeline from an empty folder.

The fresh venv gets only the wheel (``--no-deps``); a ``.pth`` file makes the project venv's
site-packages visible for the dependencies, so nothing is downloaded. The ``.pth`` adds a plain
path, so the project's own editable install (a ``.pth`` finder there) is not picked up: the
``cicdllm_assets`` that runs is the one inside the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tests.llm_fixtures import SCRIPTED_REPLY, make_scripted_model_dir

ROOT = Path(__file__).resolve().parents[1]
BUILD_IGNORES = (
    ".git",
    ".venv",
    "build",
    "*.egg-info",
    ".cicdllm",
    ".dagster_home",
    "dataset",
    "__pycache__",
    ".*_cache",
)
PROMPTS_IN_USE = (
    "from cicdllm_assets.config import load_settings;"
    "from cicdllm_assets.generation.prompts import resolve_prompts_dir;"
    "s = load_settings(); print(resolve_prompts_dir(s.config.generation, s.prompts_dir))"
)
MIT = "MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining a copy\n"


def test_every_package_is_listed_for_the_wheel() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "cicdllm_assets").rglob("__init__.py")}
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert "cicdllm_assets.default_prompts" in listed


def _fresh_venv(tmp_path: Path) -> Path:
    # Build from a copy: an in-tree build would reuse stale files of an earlier build/ directory.
    source = tmp_path / "checkout"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*BUILD_IGNORES))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("cicdllm-*.whl")
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return venv


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_from_an_empty_folder(tmp_path: Path, make_git_repo) -> None:
    venv = _fresh_venv(tmp_path)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CICDLLM_", "DAGSTER_", "PYTHON"))}
    version = subprocess.run(
        [str(bin_dir / "cicdllm"), "--version"], env=env, check=True, capture_output=True, text=True
    )
    assert version.stdout.strip() == "cicdllm 0.1.0"
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import cicdllm_assets.generation.prompts as p; print(p.SHIPPED_PROMPTS_DIR)"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    shipped = Path(where.stdout.strip())
    assert shipped.is_relative_to(venv) and shipped.name == "default_prompts"
    assert sorted(p.name for p in shipped.glob("*.yaml"))[:2] == ["_defaults.yaml", "code_explanation.yaml"]

    files = {"calc.py": "def add(a: int, b: int) -> int:\n    return a + b\n", "LICENSE": MIT}
    repo = make_git_repo("calc", files)
    model = make_scripted_model_dir(tmp_path / "model")
    work = tmp_path / "empty"
    work.mkdir()
    (work / "repos.txt").write_text(f"{repo.path}\n", encoding="utf-8")
    env.update(
        HF_HUB_OFFLINE="1",
        CICDLLM_LLM__MODEL=str(model),
        CICDLLM_GENERATION__THEMES="[code_explanation]",
        CICDLLM_GENERATION__QUESTIONS_PER_CHUNK="1",
        CICDLLM_GENERATION__MAX_CHUNKS_PER_REPO="1",
        CICDLLM_GENERATION__QUESTION_MAX_TOKENS="24",
        CICDLLM_GENERATION__ANSWER_MAX_TOKENS="24",
    )
    run = subprocess.run(
        [str(bin_dir / "cicdllm"), "run", "--json"], env=env, cwd=work, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert [r["status"] for r in summary["repos"]] == ["done"]
    assert summary["dataset"]["status"] == "done"
    rows = [json.loads(line) for line in (work / "dataset" / "dataset.jsonl").read_text().splitlines()]
    assert rows and all(row["question"] == SCRIPTED_REPLY for row in rows)
    assert (work / ".dagster_home" / "dagster.yaml").is_file()  # everything stays in the folder

    # A prompts/ folder in the project overrides the shipped templates.
    which = [str(bin_dir / "python"), "-c", PROMPTS_IN_USE]
    assert subprocess.run(which, env=env, cwd=work, check=True, capture_output=True, text=True).stdout.strip() == str(
        shipped
    )
    shutil.copytree(shipped, work / "prompts")
    assert subprocess.run(which, env=env, cwd=work, check=True, capture_output=True, text=True).stdout.strip() == str(
        work / "prompts"
    )
