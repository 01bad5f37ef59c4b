"""TableStore and StateStore behaviour on real Parquet, DuckDB and SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pyarrow as pa

from cicdllm_assets.storage.state import StateStore, connect_sqlite
from cicdllm_assets.storage.tables import TableStore, partition_file_name, partition_key_of


def test_partition_file_names_are_readable_and_escaped() -> None:
    assert partition_file_name("github.com-pallets-click@8.1.7") == "github.com-pallets-click@8.1.7.parquet"
    assert "/" not in partition_file_name("a/b")
    assert partition_file_name("a/b") != partition_file_name("a_b")
    for key in ("github.com-pallets-click@8.1.7", "a/b", "x y%z", "__all__"):
        assert partition_key_of(partition_file_name(key)) == key


def test_write_read_replace_and_duckdb_views(tmp_path: Path) -> None:
    store = TableStore(tmp_path)
    store.write("source_files", "r1", pa.table({"repo": ["r1", "r1"], "path": ["a.py", "b.py"]}))
    store.write("source_files", "r2", pa.table({"repo": ["r2"], "path": ["c.py"], "extra": [1]}))
    assert store.read("source_files", "r1").num_rows == 2
    assert store.read("source_files", "missing") is None
    # replacing a partition leaves no temp files behind
    store.write("source_files", "r1", pa.table({"repo": ["r1"], "path": ["a.py"]}))
    assert sorted(p.name for p in (tmp_path / "source_files").iterdir()) == ["r1.parquet", "r2.parquet"]
    con = store.connect()
    rows = con.execute("SELECT repo, count(*) FROM source_files GROUP BY repo ORDER BY repo").fetchall()
    assert rows == [("r1", 1), ("r2", 1)]
    assert store.read_all("source_files").num_rows == 2
    assert store.read_all("source_files", ["r2", "nope"]).num_rows == 1
    assert store.read_all("code_chunks") is None


def test_state_store_progress_failures_and_events(state_target: str | Path) -> None:
    state = StateStore(state_target)
    state.start_stage("r1", "source_files", total=10, unit="files")
    state.advance("r1", "source_files", done=3)
    state.advance("r1", "source_files", done=1, failed=1, total=12)
    state.finish_stage("r1", "source_files")
    (row,) = state.progress("r1")
    assert (row.done, row.failed, row.total, row.status, row.unit) == (4, 1, 12, "done", "files")
    state.record_failure("r1", "answers", "item-1", "timeout", "timed out after 120 s")
    state.log_event("INFO", "hello", repo="r1")
    state.start_stage("r1", "source_files", total=2, unit="files")  # a re-run resets the row
    assert [(p.done, p.total, p.status) for p in state.progress("r1")] == [(0, 2, "running")]
    state.set_repo_info("r1", "abc", "{}")
    state.set_repo_info("r1", "def", "{}")
    state.close()
    with StateStore(state_target, readonly=True) as reader:  # another connection sees every commit
        assert reader.query("SELECT category FROM failures")[0]["category"] == "timeout"
        assert [r["message"] for r in reader.query("SELECT message FROM events")] == ["hello"]
        assert [tuple(r) for r in reader.query("SELECT repo, head_commit FROM repo_info")] == [("r1", "def")]
        # the reads status uses, through the store's own methods
        assert reader.failure_counts() == {"r1": {"timeout": 1}}
        (failure,) = reader.recent_failures(5)
        assert (failure["item"], failure["message"]) == ("item-1", "timed out after 120 s")
        assert [(e["repo"], e["level"], e["message"]) for e in reader.recent_events(5)] == [("r1", "INFO", "hello")]
        assert reader.repo_heads() == {"r1": "def"}
        assert {"stage_progress", "failures", "events", "repo_info", "schema_versions"} <= reader.tables()
        if not reader.postgres:
            assert reader.query("PRAGMA journal_mode")[0][0] == "wal"


def test_state_store_closes_every_connection(state_target: str | Path) -> None:
    import threading

    store = StateStore(state_target)
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(store.connection()))
    thread.start()
    thread.join()
    with store:
        assert store.connection() is not seen[0]  # one connection per thread
    assert store._open == []  # both closed on exit, the other thread's too
    if store.postgres:
        assert seen[0].raw.closed  # type: ignore[attr-defined]


def test_reader_sees_committed_state_while_writer_holds_a_transaction(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "state.db")
    state.start_stage("r1", "questions", total=5)
    writer = sqlite3.connect(tmp_path / "state.db")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE stage_progress SET done = 5")
    reader = connect_sqlite(tmp_path / "state.db", readonly=True)
    assert reader.execute("SELECT done FROM stage_progress").fetchone()[0] == 0  # no lock error, old snapshot
    writer.commit()
    assert reader.execute("SELECT done FROM stage_progress").fetchone()[0] == 5
