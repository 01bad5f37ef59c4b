"""Status collection from real Parquet tables, a real SQLite StateStore and a real Dagster instance."""

from __future__ import annotations

import json
import sqlite3
import threading

import pyarrow as pa
from click.testing import CliRunner

from cicdllm_assets.cli.main import cli
from cicdllm_assets.config import Settings
from cicdllm_assets.status.collect import collect_status
from cicdllm_assets.storage.state import StateStore
from cicdllm_assets.storage.tables import TableStore
from cicdllm_assets.tui.format import human_bytes, human_duration
from tests.status_helpers import HEADS, make_failed_run, populate, write_state, write_tables


def test_counts_progress_failures_runs(settings: Settings) -> None:
    populate(settings)
    status = collect_status(settings, battery_reader=lambda: None)
    assert status.errors == []
    by_repo = {r.repo: r for r in status.repos}
    assert set(by_repo) == {"alpha", "beta"}
    alpha, beta = by_repo["alpha"], by_repo["beta"]
    assert (alpha.files_kept, alpha.files_skipped, alpha.chunks, alpha.questions, alpha.answers) == (10, 2, 7, 6, 5)
    assert (alpha.qa_pairs, alpha.qa_accepted, alpha.kept_bytes, alpha.chunk_tokens) == (5, 4, 15000, 700)
    assert alpha.head_commit == HEADS["alpha"] and alpha.license == "MIT" and alpha.size_bytes == 2_500_000
    assert alpha.failures == 2 and alpha.failures_by_category == {"parse_error": 1, "timeout": 1}
    assert beta.failures_by_category == {"decode_error": 1}
    assert (beta.files_kept, beta.files_skipped, beta.questions) == (3, 1, 0)
    # last run per partition from the Dagster instance
    assert alpha.last_run is not None and alpha.last_run.partition == "alpha" and alpha.last_run.status == "SUCCESS"
    assert beta.last_run is not None and beta.last_run.partition == "beta"
    assert {r.partition for r in status.runs} == {"alpha", "beta"}
    # stage hierarchy: total over repos, then per repo
    stages = {s.stage: s for s in status.stages}
    assert list(stages) == ["source_files", "answers"]  # pipeline order
    assert (stages["source_files"].done, stages["source_files"].total, stages["source_files"].repos) == (14, 17, 2)
    assert stages["source_files"].status == "running" and stages["source_files"].unit == "files"
    assert (stages["answers"].done, stages["answers"].failed) == (4, 1)
    assert [s.stage for s in alpha.stages] == ["source_files", "answers"]
    assert status.failure_categories == {"decode_error": 1, "parse_error": 1, "timeout": 1}
    assert [e.message for e in status.events][-1] == "answers: batch 1 of 3 done"  # newest last
    assert status.totals()["chunks"] == 9


def test_empty_project_is_all_zeros_and_creates_nothing(settings: Settings) -> None:
    status = collect_status(settings, battery_reader=lambda: None)
    assert status.repos == [] and status.stages == [] and status.events == [] and status.runs == []
    assert status.errors == []
    assert not settings.state_db.exists()
    # the viewer never initialises Dagster's storage (a race with a starting run would corrupt it)
    assert list(settings.dagster_home.iterdir()) == []
    assert status.to_dict()["totals"]["answers"] == 0


def test_missing_columns_and_tables_count_as_zero(settings: Settings) -> None:
    tables = TableStore(settings.tables_dir)
    tables.write("source_files", "gamma", pa.table({"path": ["a.py", "b.py"]}))  # no status column yet
    tables.write("code_chunks", "gamma", pa.table({"repo": ["gamma"], "chunk_key": ["k"]}))  # no token_count
    (settings.tables_dir / "code_chunks" / ".code_chunks.tmp").write_bytes(b"half-written")  # a writer's temp file
    StateStore(settings.state_db).connection().execute("DROP TABLE events")
    status = collect_status(settings, include_runs=False, battery_reader=lambda: None)
    (gamma,) = status.repos
    assert (gamma.repo, gamma.files_kept, gamma.files_skipped) == ("gamma", 0, 0)
    assert (gamma.chunks, gamma.chunk_tokens) == (1, 0)
    assert status.events == [] and status.errors == []


def test_reads_while_a_writer_holds_the_write_lock(settings: Settings) -> None:
    write_state(settings)
    write_tables(settings, "alpha", files=2, skipped=0, chunks=1, questions=1, answers=1, accepted=1)
    writer = sqlite3.connect(settings.state_db)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO events (ts, repo, level, message) VALUES (1, 'alpha', 'INFO', 'uncommitted')")
    done = threading.Event()
    result = {}

    def read() -> None:
        result["status"] = collect_status(settings, include_runs=False, battery_reader=lambda: None)
        done.set()

    thread = threading.Thread(target=read)
    thread.start()
    assert done.wait(30), "the reader blocked on the writer's lock"
    writer.rollback()
    writer.close()
    status = result["status"]
    assert status.errors == []
    assert "uncommitted" not in [e.message for e in status.events]
    assert {r.repo for r in status.repos} == {"alpha", "beta"}


def test_once_json_schema(settings: Settings) -> None:
    populate(settings)
    out = CliRunner().invoke(cli, ["status", "--once", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert set(data) >= {
        "generated_at",
        "config_path",
        "data_dir",
        "dagster_home",
        "totals",
        "repos",
        "stages",
        "failure_categories",
        "failures",
        "events",
        "runs",
        "resources",
        "tokens_per_second",
        "errors",
    }
    repo = next(r for r in data["repos"] if r["repo"] == "alpha")
    for key, kind in {
        "head_commit": str,
        "files_kept": int,
        "files_skipped": int,
        "chunks": int,
        "questions": int,
        "answers": int,
        "qa_pairs": int,
        "qa_accepted": int,
        "failures": int,
        "failures_by_category": dict,
        "last_run": dict,
        "stages": list,
    }.items():
        assert isinstance(repo[key], kind), key
    assert repo["last_run"]["status"] == "SUCCESS" and repo["last_run"]["partition"] == "alpha"
    stage = repo["stages"][0]
    assert set(stage) >= {
        "stage",
        "done",
        "total",
        "failed",
        "unit",
        "status",
        "rate_per_minute",
        "eta_seconds",
        "fraction",
    }
    assert set(data["resources"]) >= {"cpu_percent", "memory_percent", "memory_used", "memory_total", "battery"}
    assert set(data["resources"]["battery"]) >= {"present", "percent", "power_plugged", "paused", "threshold"}
    assert data["totals"]["files_kept"] == 13 and data["failure_categories"]["timeout"] == 1


def test_once_table_and_usage_errors(settings: Settings) -> None:
    populate(settings, with_runs=False)
    out = CliRunner().invoke(cli, ["status", "--once", "--no-runs"], terminal_width=200)
    assert out.exit_code == 0, out.output
    for text in ("Repositories", "alpha", "beta", "source_files", "Failures by category", "timeout", "Battery"):
        assert text in out.output
    bad = CliRunner().invoke(cli, ["status", "--json"])
    assert bad.exit_code == 2 and "--json needs --once" in bad.output


def test_invalid_config_exits_2(settings: Settings) -> None:
    assert settings.path is not None
    settings.path.write_text("ui:\n  refresh_seconds: 0\n", encoding="utf-8")
    out = CliRunner().invoke(cli, ["status", "--once", "--json"])
    assert out.exit_code == 2 and "ui.refresh_seconds" in out.output


def test_human_units() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KB"
    assert human_bytes(5 * 1024 * 1024) == "5.0 MB"
    assert human_bytes(None) == "-"
    assert human_duration(75) == "1m15s" and human_duration(3700) == "1h01m" and human_duration(None) == "-"


def test_unpartitioned_stage_is_a_stage_not_a_repo(settings: Settings) -> None:
    state = StateStore(settings.state_db)
    state.start_stage("*", "training_dataset", 3, "repos")
    state.advance("*", "training_dataset", done=3)
    state.finish_stage("*", "training_dataset")
    status = collect_status(settings, include_runs=False, battery_reader=lambda: None)
    assert status.repos == []
    (stage,) = status.stages
    assert (stage.stage, stage.done, stage.total, stage.status) == ("training_dataset", 3, 3, "done")


def test_running_stage_without_progress_is_stalled(settings: Settings) -> None:
    state = StateStore(settings.state_db)
    state.start_stage("alpha", "answers", 10, "items")
    state.advance("alpha", "answers", done=3)
    with state.transaction() as con:  # the run process died 20 minutes ago
        con.execute("UPDATE stage_progress SET started_at = started_at - 1500, updated_at = updated_at - 1200")
    state.start_stage("beta", "answers", 4, "items")
    state.advance("beta", "answers", done=1)
    status = collect_status(settings, include_runs=False, battery_reader=lambda: None)
    by_repo = {r.repo: r.stages[0] for r in status.repos}
    assert by_repo["alpha"].stalled and not by_repo["beta"].stalled
    assert not status.stages[0].stalled  # beta is still moving
    assert by_repo["alpha"].rate_per_minute is not None and by_repo["alpha"].rate_per_minute < 1


def test_failed_runs_explain_why(settings: Settings) -> None:
    populate(settings)
    run_id = make_failed_run(settings.dagster_home, "beta")
    status = collect_status(settings, battery_reader=lambda: None)
    beta = next(r for r in status.repos if r.repo == "beta")
    assert beta.last_run is not None and beta.last_run.status == "FAILURE" and beta.last_run.run_id == run_id
    (failure,) = status.run_failures
    assert (failure.repo, failure.stage, failure.category) == ("beta", "status_probe", "run_failure")
    assert failure.item == f"run {run_id[:8]}"
    assert failure.message == "ValueError: kaboom: the model server refused the connection"
    assert status.to_dict()["run_failures"][0]["message"].startswith("ValueError: kaboom")


def test_generated_counts_and_tokens_per_second_come_from_the_ledger(settings: Settings) -> None:
    import time

    from cicdllm_assets.generation.ledger import Ledger, LedgerItem, Outcome

    with StateStore(settings.state_db) as state:
        ledger = Ledger(state)
        question = LedgerItem("q", "question", "alpha", "c", "t", "h", "m", "{}")
        ledger.record(question, Outcome("ok", output="raw", parsed=["a?", "b?"], completion_tokens=600))
        answer = LedgerItem("a", "answer", "alpha", "c", "t", "h", "m", "{}", "a?")
        ledger.record(answer, Outcome("ok", output="yes", completion_tokens=300))
        state.start_stage("alpha", "questions", total=4)  # running: its table lags, the ledger counts
        with state.transaction() as con:  # another component's table with the same column names
            con.execute("CREATE TABLE other_usage (completion_tokens INTEGER, updated_at REAL)")
            con.execute("INSERT INTO other_usage VALUES (999999, ?)", (time.time(),))
        first = ledger.get("q")
    assert first is not None
    status = collect_status(settings, include_runs=False, battery_reader=lambda: None)
    (alpha,) = status.repos
    assert alpha.questions == 2 and alpha.answers == 0  # the answers stage is not running
    assert status.tokens_per_second == 900 / max(status.generated_at - first.updated_at, 1.0)
