"""Shared fixtures: real git repositories in temp dirs and an isolated project directory."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cicdllm_assets.config import Settings, load_settings

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` and return stdout."""
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


class GitRepo:
    """A real git repository in a temp dir, with helpers to write files and commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        git(path, "init", "-q", "-b", "main")

    def write(self, relpath: str, content: str | bytes) -> Path:
        """Write a file (creating folders)."""
        target = self.path / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
        return target

    def commit(self, message: str = "commit") -> str:
        """Stage everything and commit; return the new head sha."""
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "-m", message)
        return git(self.path, "rev-parse", "HEAD")

    def git(self, *args: str) -> str:
        """Run any git command here."""
        return git(self.path, *args)


@pytest.fixture
def make_git_repo(tmp_path: Path) -> Callable[..., GitRepo]:
    """Factory: ``make_git_repo("name", {"a.py": "..."})`` -> committed GitRepo."""

    def factory(name: str = "repo", files: dict[str, str | bytes] | None = None) -> GitRepo:
        repo = GitRepo(tmp_path / "repos" / name)
        for relpath, content in (files or {"README.md": "# test\n"}).items():
            repo.write(relpath, content)
        repo.commit("initial")
        return repo

    return factory


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated project dir with cicdllm.yaml and repos.txt; CICDLLM_CONFIG and
    DAGSTER_HOME point into it. Tests write repos.txt / edit cicdllm.yaml as needed."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "repos.txt").write_text("", encoding="utf-8")
    (root / "cicdllm.yaml").write_text("storage:\n  data_dir: data\n  dagster_home: dagster_home\n", encoding="utf-8")
    (root / "dagster_home").mkdir()
    monkeypatch.setenv("CICDLLM_CONFIG", str(root / "cicdllm.yaml"))
    monkeypatch.setenv("DAGSTER_HOME", str(root / "dagster_home"))
    for name in list(os.environ):
        if name.startswith("CICDLLM_") and "__" in name:
            monkeypatch.delenv(name)
    yield root


@pytest.fixture
def settings(project: Path) -> Settings:
    """Settings loaded from the isolated project."""
    return load_settings()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh Postgres database for this test run (created and dropped here)."""
    from tests.services import fresh_database

    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def state_target(
    request: pytest.FixtureRequest, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str | Path:
    """The state store of this test, on each backend: a SQLite file, or a Postgres schema of its own
    in the run's database. ``storage.state_url`` (env override) points the project's settings at it."""
    if request.param == "sqlite":
        return project / "data" / "state.db"
    import uuid

    from tests.services import schema_url

    url = schema_url(request.getfixturevalue("pg_database"), f"t_{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("CICDLLM_STORAGE__STATE_URL", url)
    return url
