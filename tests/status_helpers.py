"""Real project state for the status/TUI tests: Parquet tables written with TableStore,
a real SQLite StateStore and a real Dagster instance with partitioned runs in it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from cicdllm_assets.config import Settings
from cicdllm_assets.storage.state import StateStore
from cicdllm_assets.storage.tables import TableStore

HEADS = {"alpha": "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678", "beta": "0f1e2d3c4b5a69788796a5b4c3d2e1f009876543"}


def write_tables(
    settings: Settings, repo: str, files: int, skipped: int, chunks: int, questions: int, answers: int, accepted: int
) -> None:
    """Write one repo's partitions of every asset table (columns as in the team brief)."""
    store = TableStore(settings.tables_dir)
    head = HEADS.get(repo, "f" * 40)
    store.write(
        "repositories",
        repo,
        pa.table(
            {
                "repo": [repo],
                "url": [f"https://example.invalid/{repo}.git"],
                "ref": ["main"],
                "local_path": [f"/tmp/{repo}"],
                "head_commit": [head],
                "default_branch": ["main"],
                "license": ["MIT"],
                "size_bytes": [2_500_000],
                "fetched_at": [1.0],
            }
        ),
    )
    n = files + skipped
    store.write(
        "source_files",
        repo,
        pa.table(
            {
                "repo": [repo] * n,
                "commit": [head] * n,
                "path": [f"src/f{i}.py" for i in range(n)],
                "blob_sha": [f"{i:040x}" for i in range(n)],
                "size_bytes": [1500] * n,
                "language": ["python"] * n,
                "status": ["kept"] * files + ["skipped"] * skipped,
                "skip_reason": [None] * files + ["too_large"] * skipped,
            }
        ),
    )
    store.write(
        "code_chunks",
        repo,
        pa.table(
            {
                "repo": [repo] * chunks,
                "chunk_key": [f"{repo}-c{i}" for i in range(chunks)],
                "token_count": [100] * chunks,
                "text": ["def f():\n    pass\n"] * chunks,
            }
        ),
    )
    store.write(
        "questions",
        repo,
        pa.table(
            {
                "repo": [repo] * questions,
                "question_id": [f"{repo}-q{i}" for i in range(questions)],
                "question": ["What does f do?"] * questions,
            }
        ),
    )
    store.write(
        "answers",
        repo,
        pa.table(
            {
                "repo": [repo] * answers,
                "answer_id": [f"{repo}-a{i}" for i in range(answers)],
                "completion_tokens": [40] * answers,
                "answer": ["It does nothing."] * answers,
            }
        ),
    )
    store.write(
        "qa_pairs",
        repo,
        pa.table(
            {
                "repo": [repo] * answers,
                "answer_id": [f"{repo}-a{i}" for i in range(answers)],
                "accepted": [i < accepted for i in range(answers)],
                "reject_reason": [None if i < accepted else "too_short" for i in range(answers)],
            }
        ),
    )


def write_state(settings: Settings) -> StateStore:
    """Stage progress, failures, events and repo info like a run in progress leaves them."""
    state = StateStore(settings.state_db)
    for repo, head in HEADS.items():
        state.set_repo_info(repo, head, json.dumps({"license": "MIT"}))
    state.start_stage("alpha", "source_files", 12, "files")
    state.advance("alpha", "source_files", done=12)
    state.finish_stage("alpha", "source_files")
    state.start_stage("alpha", "answers", 10, "items")
    state.advance("alpha", "answers", done=4, failed=1)
    state.start_stage("beta", "source_files", 5, "files")
    state.advance("beta", "source_files", done=2)
    state.record_failure("alpha", "answers", "chunk-7", "timeout", "request timed out after 120s")
    state.record_failure("alpha", "answers", "chunk-9", "parse_error", "answer was empty")
    state.record_failure("beta", "source_files", "bin/blob.dat", "decode_error", "not UTF-8 text")
    state.log_event("INFO", "cloned at a1b2c3d", repo="alpha")
    state.log_event("WARNING", "1 file could not be decoded", repo="beta")
    state.log_event("INFO", "answers: batch 1 of 3 done", repo="alpha")
    return state


def populate(settings: Settings, with_runs: bool = True) -> StateStore:
    """Two repos, alpha (partly generated) and beta (ingesting); a Dagster run per repo."""
    write_tables(settings, "alpha", files=10, skipped=2, chunks=7, questions=6, answers=5, accepted=4)
    write_tables(settings, "beta", files=3, skipped=1, chunks=2, questions=0, answers=0, accepted=0)
    state = write_state(settings)
    if with_runs:
        make_runs(settings.dagster_home, ["alpha", "beta"])
    return state


def make_runs(dagster_home: Path, repos: list[str]) -> None:
    """Materialize a trivial repo-partitioned asset once per repo in the instance at dagster_home."""
    from dagster import DagsterInstance, asset, materialize

    from cicdllm_assets.partitions import repos_partitions

    @asset(partitions_def=repos_partitions, name="status_probe")
    def status_probe() -> None:
        return None

    dagster_yaml = dagster_home / "dagster.yaml"
    if not dagster_yaml.exists():
        dagster_yaml.write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.add_dynamic_partitions("repos", repos)
        for repo in repos:
            result = materialize([status_probe], partition_key=repo, instance=instance)
            assert result.success


def make_failed_run(dagster_home: Path, repo: str) -> str:
    """A run of ``repo``'s partition whose step raises; returns the run id."""
    from dagster import DagsterInstance, asset, materialize

    from cicdllm_assets.partitions import repos_partitions

    @asset(partitions_def=repos_partitions, name="status_probe")
    def status_probe() -> None:
        raise ValueError("kaboom: the model server refused the connection")

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.add_dynamic_partitions("repos", [repo])
        result = materialize([status_probe], partition_key=repo, instance=instance, raise_on_error=False)
        assert not result.success
        return result.run_id
