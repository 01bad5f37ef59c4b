"""Parallel writers and a concurrent reader on the shared storage: no lock errors, no lost rows.

Four processes each materialize source_files and code_chunks for one repo partition (real
Dagster runs, one shared DAGSTER_HOME and data dir) while a fifth process keeps querying the
tables through TableStore.connect() DuckDB views and the SQLite live state.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from pathlib import Path
from typing import Any

import pytest

from cicdllm_assets.config import load_settings
from cicdllm_assets.storage.state import StateStore, connect_sqlite
from cicdllm_assets.storage.tables import TableStore
from tests.discovery_helpers import train_tokenizer, write_config, write_repositories_row

REPOS = {"alpha": 6, "beta": 9, "gamma": 12, "delta": 15}  # repo -> number of source files


def _env(project: Path) -> None:
    os.environ["CICDLLM_CONFIG"] = str(project / "cicdllm.yaml")
    os.environ["DAGSTER_HOME"] = str(project / "dagster_home")


def writer(project: str, repo: str, results: Any) -> None:
    """Child process: materialize one partition."""
    try:
        _env(Path(project))
        from tests.discovery_helpers import materialize_ingest

        result = materialize_ingest(repo)
        results.put((repo, "ok" if result.success else "failed", ""))
    except BaseException:
        results.put((repo, "error", traceback.format_exc()))


def reader(project: str, stop: Any, results: Any) -> None:
    """Child process: query tables and state until told to stop; report every error."""
    errors: list[str] = []
    reads = 0
    try:
        _env(Path(project))
        settings = load_settings()
        store = TableStore(settings.tables_dir)
        while not stop.is_set():
            try:
                con = store.connect()
                views = {row[0] for row in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
                for view in ("source_files", "code_chunks"):
                    if view in views:
                        con.execute(f"SELECT repo, count(*) FROM {view} GROUP BY repo").fetchall()  # noqa: S608
                con.close()
                if settings.state_db.exists():
                    sqlite = connect_sqlite(settings.state_db, readonly=True)
                    sqlite.execute("SELECT * FROM stage_progress").fetchall()
                    tables = {r[0] for r in sqlite.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                    if "chunk_cache" in tables:
                        sqlite.execute("SELECT count(*) FROM chunk_cache").fetchone()
                    sqlite.close()
                reads += 1
            except Exception:  # every failure is a finding
                errors.append(traceback.format_exc())
            time.sleep(0.02)
    finally:
        results.put(("reader", reads, errors))


@pytest.mark.slow
def test_parallel_partitions_with_concurrent_reader(project: Path, make_git_repo, tmp_path: Path) -> None:
    write_config(project, train_tokenizer(tmp_path / "tok" / "tokenizer.json"), budget=128)
    (project / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    settings = load_settings()
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("repos", list(REPOS))
    for repo, count in REPOS.items():
        files = {f"pkg/mod_{i}.py": f"def {repo}_function_{i}(x):\n    return x * {i}\n" for i in range(count)}
        git_repo = make_git_repo(repo, files)
        write_repositories_row(settings, repo, git_repo.path, git_repo.git("rev-parse", "HEAD"))

    # The state DB's schema exists before any reader looks (as after any first run);
    # a reader racing the very first CREATE TABLE is not what this test is about.
    StateStore(settings.state_db).close()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    stop = ctx.Event()
    read_proc = ctx.Process(target=reader, args=(str(project), stop, results))
    read_proc.start()
    writers = [ctx.Process(target=writer, args=(str(project), repo, results)) for repo in REPOS]
    for proc in writers:
        proc.start()
    for proc in writers:
        proc.join(timeout=600)
    stop.set()
    read_proc.join(timeout=120)

    outcomes: dict[str, Any] = {}
    while len(outcomes) < len(REPOS) + 1:
        item = results.get(timeout=30)
        outcomes[item[0]] = item
    for repo in REPOS:
        assert outcomes[repo][1] == "ok", outcomes[repo][2]
    assert all(proc.exitcode == 0 for proc in writers)
    _, reads, errors = outcomes["reader"]
    assert errors == [], errors[0]
    assert reads >= 5

    # no lost rows: every partition's files and chunks are there
    con = TableStore(settings.tables_dir).connect()
    per_repo_files = dict(con.execute("SELECT repo, count(*) FROM source_files GROUP BY repo").fetchall())
    per_repo_chunks = dict(con.execute("SELECT repo, count(*) FROM code_chunks GROUP BY repo").fetchall())
    assert per_repo_files == REPOS
    assert per_repo_chunks == REPOS  # each small file is one chunk
    assert con.execute("SELECT count(DISTINCT chunk_key) FROM code_chunks").fetchone()[0] == sum(REPOS.values())
    state = StateStore(settings.state_db)
    done = {(p.repo, p.stage): (p.status, p.done) for p in state.progress()}
    for repo, count in REPOS.items():
        assert done[(repo, "source_files")] == ("done", count)
        assert done[(repo, "code_chunks")] == ("done", count)
    cached = state.connection().execute("SELECT count(*) FROM chunk_cache").fetchone()[0]
    assert cached == sum(REPOS.values())
