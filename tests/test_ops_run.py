"""`cicdllm run`: real git repos, the real ingest assets, a persistent Dagster instance.

Generation needs a model, so these runs select the ingest group (``--select group:ingest``);
the selection logic itself is checked on the full pipeline's keys with stand-in assets.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from cicdllm_assets.automation.jobs import PARTITIONED_ASSETS, dataset_job, main_job
from cicdllm_assets.cli.main import cli
from cicdllm_assets.config import load_settings
from cicdllm_assets.partitions import REPOS_PARTITIONS_NAME, repos_partitions
from cicdllm_assets.runner.instance import ensure_dagster_home
from cicdllm_assets.runner.progress import ProgressDisplay, read_progress, render_progress
from cicdllm_assets.runner.selection import SelectionError, plan_selection
from cicdllm_assets.storage.state import StateStore, open_state_readonly
from cicdllm_assets.storage.tables import TableStore
from tests.discovery_helpers import train_tokenizer

INGEST = ["repositories", "source_files", "code_chunks"]


@pytest.fixture
def ingest_project(project: Path, tmp_path: Path) -> Path:
    """The project with a trained tokenizer, so ingest runs without a prepared model."""
    tokenizer = train_tokenizer(tmp_path / "tok" / "tokenizer.json")
    (project / "cicdllm.yaml").write_text(
        "storage:\n  data_dir: data\n  dagster_home: dagster_home\n"
        f"processing:\n  tokenizer: {tokenizer}\n  chunk_max_tokens: 96\n",
        encoding="utf-8",
    )
    return project


def _run(*args: str) -> tuple[int, dict, str]:
    result = CliRunner().invoke(cli, ["run", *args, "--json"], catch_exceptions=False)
    data = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    return result.exit_code, data, result.stderr


def _by_repo(data: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in data["repos"]}


@pytest.mark.slow
def test_run_ingest_then_unchanged_then_only_the_moved_repo(ingest_project: Path, make_git_repo) -> None:
    alpha = make_git_repo("alpha", {"a.py": "def a():\n    return 1\n", "LICENSE": "MIT License\n"})
    beta = make_git_repo("beta", {"b.py": "def b(x):\n    return x * 2\n"})
    (ingest_project / "repos.txt").write_text(f"{alpha.path}\n{beta.path}\n", encoding="utf-8")

    code, data, _ = _run("--select", "group:ingest")
    assert code == 0, data
    repos = _by_repo(data)
    assert set(repos) == {"local-alpha", "local-beta"}
    assert {r["status"] for r in repos.values()} == {"done"}
    assert repos["local-alpha"]["head_commit"] == alpha.git("rev-parse", "HEAD")
    assert repos["local-alpha"]["previous_head_commit"] is None
    assert set(repos["local-alpha"]["rows"]) == set(INGEST)
    assert data["selection"] == INGEST
    assert data["dataset"] is None

    # The runs are in the project's instance, named after the job, one per partition.
    instance = dg.DagsterInstance.get()
    runs = instance.get_runs(dg.RunsFilter(job_name="main_job"))
    assert sorted(r.tags["dagster/partition"] for r in runs) == ["local-alpha", "local-beta"]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)

    code, data, _ = _run("--select", "group:ingest")
    assert code == 0
    assert {r["status"] for r in data["repos"]} == {"unchanged"}

    alpha.write("c.py", "def c():\n    return 3\n")
    new_head = alpha.commit("add c")
    code, data, _ = _run("--select", "group:ingest")
    repos = _by_repo(data)
    assert code == 0
    assert repos["local-alpha"]["status"] == "done"
    assert repos["local-alpha"]["head_commit"] == new_head != repos["local-alpha"]["previous_head_commit"]
    assert repos["local-beta"]["status"] == "unchanged"

    code, data, _ = _run("--select", "key:repositories", "--repo", "local-beta")
    assert code == 0
    assert [r["name"] for r in data["repos"]] == ["local-beta"]
    assert data["selection"] == ["repositories"]


@pytest.mark.slow
def test_a_failing_repo_is_reported_and_the_others_still_run(ingest_project: Path, make_git_repo) -> None:
    good = make_git_repo("good", {"g.py": "print('ok')\n"})
    broken = make_git_repo("broken", {"x.py": "print('x')\n"})
    unreachable = "https://127.0.0.1:1/acme/down"  # nothing listens on port 1: a network failure
    (ingest_project / "repos.txt").write_text(f"{broken.path}\n{good.path}\n{unreachable}\n", encoding="utf-8")
    shutil.rmtree(broken.path / ".git")  # still a directory, no longer a repository

    code, data, _ = _run("--select", "key:repositories")
    assert code == 1
    repos = _by_repo(data)
    assert repos["local-good"]["status"] == "done"
    failed = repos["local-broken"]
    assert failed["status"] == "failed"
    assert failed["reason"].startswith("repositories: ")
    assert "max_retries" not in failed["reason"]  # the cause, not Dagster's wrapper
    assert failed["retries"] == 0  # not a repository: a permanent failure, not retried
    assert failed["run_id"]
    down = repos["127.0.0.1-1-acme-down"]
    assert down["status"] == "failed"
    assert "max_retries" not in down["reason"]
    assert down["retries"] == 2  # a network failure: the retry policy ran before giving up
    assert data["ok"] is False
    assert data["counts"] == {"done": 1, "failed": 2, "incomplete": 0, "not_run": 0, "unchanged": 0}


def test_bad_input_exits_2_with_a_clear_message(ingest_project: Path, make_git_repo) -> None:
    repo = make_git_repo("only")
    (ingest_project / "repos.txt").write_text(f"{repo.path}\n", encoding="utf-8")
    runner = CliRunner()

    result = runner.invoke(cli, ["run", "--repo", "local-nope"])
    assert result.exit_code == 2
    assert "unknown repo partition(s) ['local-nope']" in result.stderr
    assert "local-only" in result.stderr

    result = runner.invoke(cli, ["run", "--select", "key:no_such_asset"])
    assert result.exit_code == 2
    assert "matches no asset" in result.stderr

    (ingest_project / "repos.txt").write_text("ext::sh -c evil\n", encoding="utf-8")
    result = runner.invoke(cli, ["run"])
    assert result.exit_code == 2
    assert "repos.txt:1:" in result.stderr and "transport helpers" in result.stderr

    (ingest_project / "cicdllm.yaml").write_text("generation:\n  batch_sise: 4\n", encoding="utf-8")
    result = runner.invoke(cli, ["run"])
    assert result.exit_code == 2
    assert "generation.batch_sise: unknown key" in result.stderr


def test_dagster_home_defaults_to_the_project_one(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_HOME")
    (project / "cicdllm.yaml").write_text("storage:\n  dagster_home: state/dh\n", encoding="utf-8")
    home = ensure_dagster_home(load_settings())
    assert home == project / "state" / "dh"
    assert (home / "dagster.yaml").is_file()
    assert "max_concurrent_runs: 2" in (home / "dagster.yaml").read_text(encoding="utf-8")
    import os

    assert os.environ["DAGSTER_HOME"] == str(home)
    instance = dg.DagsterInstance.get()  # the written dagster.yaml validates
    assert instance.run_monitoring_enabled
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
    assert instance.run_coordinator is not None


def _stand_in_defs() -> dg.Definitions:
    assets = []
    for i, name in enumerate([*PARTITIONED_ASSETS, "training_dataset"]):
        parent = [PARTITIONED_ASSETS[i - 1]] if i else []
        partitioned = name != "training_dataset"

        @dg.asset(
            name=name,
            deps=parent,
            partitions_def=repos_partitions if partitioned else None,
            group_name="ingest" if i < 3 else ("generation" if i < 5 else "dataset"),
        )
        def _a() -> None:
            return None

        assets.append(_a)
    return dg.Definitions(assets=assets, jobs=[main_job, dataset_job])


@pytest.mark.slow
def test_per_repo_include_and_a_repo_with_no_kept_files(ingest_project: Path, make_git_repo) -> None:
    """repos.txt options apply to their own line only; 0 kept files warn in the run summary (JSON
    and table), ``cicdllm status --once --json`` and the source_files materialization."""
    alpha = make_git_repo("alpha", {"src/a.py": "def a():\n    return 1\n", "tools/t.py": "X = 1\n"})
    beta = make_git_repo("beta", {"b.py": "def b(x):\n    return x * 2\n", "c.py": "C = 3\n"})
    (ingest_project / "repos.txt").write_text(
        f"{alpha.path} include=src/**\n{beta.path} include=src/**,lib/** exclude=b.py\n", encoding="utf-8"
    )
    code, data, _ = _run("--select", "repositories,source_files")
    assert code == 0, data
    assert data["selection"] == ["repositories", "source_files"]
    repos = _by_repo(data)
    assert repos["local-alpha"]["warnings"] == []
    assert repos["local-alpha"]["rows"]["source_files"] == 2
    warning = repos["local-beta"]["warnings"]
    assert len(warning) == 1 and warning[0].startswith("source_files: 0 of 2 files kept (2 not_included)")

    settings = load_settings()
    kept = {
        row["path"]
        for row in TableStore(settings.tables_dir).read("source_files", "local-alpha").to_pylist()
        if row["status"] == "kept"
    }
    assert kept == {"src/a.py"}  # tools/t.py is outside alpha's include=
    records = (
        dg.DagsterInstance.get()
        .fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("source_files"), asset_partitions=["local-beta"]), limit=1
        )
        .records
    )
    beta_meta = records[0].asset_materialization.metadata
    assert beta_meta["warning"].value.startswith("0 of 2 files kept")

    status = CliRunner().invoke(cli, ["status", "--once", "--json", "--no-runs"], catch_exceptions=False)
    by_repo = {repo["repo"]: repo for repo in json.loads(status.stdout)["repos"]}
    assert by_repo["local-alpha"]["warnings"] == []
    assert by_repo["local-beta"]["warnings"][0].startswith("0 of 2 files kept")
    once = CliRunner().invoke(cli, ["status", "--once", "--no-runs"], catch_exceptions=False)
    assert "warning: local-beta: 0 of 2 files kept" in " ".join(once.output.split())

    table = CliRunner().invoke(cli, ["run", "--select", "repositories,source_files"], catch_exceptions=False)
    assert "warning: local-beta: source_files: 0 of 2 files kept" in " ".join(table.output.split())


def test_selection_strings_split_into_repo_chain_and_dataset_step() -> None:
    defs = _stand_in_defs()
    plan = plan_selection(defs, None, "main_job", "dataset_job")
    assert plan.names == [*PARTITIONED_ASSETS, "training_dataset"]
    plan = plan_selection(defs, "answers+", "main_job", "dataset_job")
    assert plan.names == ["answers", "qa_pairs"]
    plan = plan_selection(defs, "qa_pairs+", "main_job", "dataset_job")
    assert plan.names == ["qa_pairs", "training_dataset"]
    plan = plan_selection(defs, "group:ingest", "main_job", "dataset_job")
    assert plan.names == INGEST and plan.dataset_keys == ()
    plan = plan_selection(defs, "repositories,source_files", "main_job", "dataset_job")
    assert plan.names == ["repositories", "source_files"]
    plan = plan_selection(defs, "code_chunks, qa_pairs+", "main_job", "dataset_job")
    assert plan.names == ["code_chunks", "qa_pairs", "training_dataset"]
    plan = plan_selection(defs, "key:training_dataset", "main_job", "dataset_job")
    assert plan.repo_keys == () and plan.names == ["training_dataset"]
    with pytest.raises(SelectionError, match="matches no asset"):
        plan_selection(defs, "key:nothing", "main_job", "dataset_job")
    with pytest.raises(SelectionError, match="invalid asset selection"):
        plan_selection(defs, "key:(((", "main_job", "dataset_job")


def test_progress_view_reads_the_state_store_while_it_is_written(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    assert read_progress(db, 0) == []
    store = StateStore(db)
    store.start_stage("local-a", "code_chunks", total=10, unit="files")
    store.advance("local-a", "code_chunks", done=4, failed=1)
    rows = read_progress(db, 0)
    assert [(r.repo, r.stage, r.done, r.failed) for r in rows] == [("local-a", "code_chunks", 4, 1)]
    assert read_progress(db, rows[0].updated_at + 1) == []
    table = render_progress(rows, {"local-a": "running", "local-b": "done"})
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(table)
    text = console.export_text()
    assert "4/10 files" in text and "local-b" in text and "code_chunks" in text


def test_progress_view_shows_tokens_per_second_and_pairs_per_minute(tmp_path: Path) -> None:
    from rich.console import Console

    from cicdllm_assets.generation.ledger import Ledger, LedgerItem, Outcome
    from cicdllm_assets.runner.progress import generation_rates, read_generated

    db = tmp_path / "state.db"
    assert read_generated(db, 0) == (0, 0)  # no database yet
    store = StateStore(db)
    ledger = Ledger(store)
    assert read_generated(db, 0) == (0, 0)
    store.start_stage("local-a", "questions", total=1, unit="items")
    for kind, key, status, tokens in [
        ("question", "q1", "ok", 100),
        ("answer", "a1", "ok", 200),
        ("answer", "a2", "ok", 300),
        ("answer", "a3", "failed", 50),
    ]:
        item = LedgerItem(key, kind, "local-a", "chunk", "theme", "hash", "model", "{}")
        ledger.record(item, Outcome(status, output="x", parsed=["x"], completion_tokens=tokens))  # type: ignore[arg-type]
    assert read_generated(db, 0) == (650, 2)
    rows = read_progress(db, 0)
    start = rows[0].started_at
    # 650 tokens and 2 pairs over the 10 s since the questions stage started.
    assert generation_rates(rows, 650, 2, start + 10.0) == "generation: 65.0 tokens/s, 12.0 pairs/min"
    assert generation_rates([r for r in rows if r.stage != "questions"], 650, 2, start + 10.0) == ""
    console = Console(width=120, record=True)
    console.print(render_progress(rows, {"local-a": "running"}, rates="generation: 65.0 tokens/s, 12.0 pairs/min"))
    assert "65.0 tokens/s, 12.0 pairs/min" in console.export_text()


def test_progress_reader_opens_the_state_store_once_for_all_polls(tmp_path: Path, monkeypatch) -> None:
    from cicdllm_assets.runner import progress

    db = tmp_path / "state.db"
    opened: list[object] = []

    def counting_open(target: object) -> object:
        store = open_state_readonly(target)
        opened.append(store)
        return store

    monkeypatch.setattr(progress, "open_state_readonly", counting_open)
    with progress.ProgressReader(db) as reader:
        assert reader.progress(0) == [] and reader.loads() == {}  # no database yet: looked for again
        writer = StateStore(db)
        writer.start_stage("local-a", "code_chunks", total=10, unit="files")
        for done in range(1, 6):
            writer.advance("local-a", "code_chunks", done=1)
            assert [r.done for r in reader.progress(0)] == [done]
            assert reader.loads() == {}
        writer.close()
    assert len(opened) == 3 and opened[0] is None and opened[1] is None  # then one store for every poll
    assert reader._store is None  # closed on exit


def test_partitions_are_synced_from_repos_txt_before_running(ingest_project: Path, make_git_repo) -> None:
    repo = make_git_repo("synced")
    (ingest_project / "repos.txt").write_text(f"{repo.path}\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["run", "--select", "key:nothing_here"])
    assert result.exit_code == 2  # the selection is rejected, but the sync already happened
    assert dg.DagsterInstance.get().get_dynamic_partitions(REPOS_PARTITIONS_NAME) == ["local-synced"]


def test_live_display_polls_the_state_store_and_keeps_log_lines_readable(tmp_path: Path, monkeypatch) -> None:
    import io
    import logging

    from rich.console import Console

    db = tmp_path / "state.db"
    store = StateStore(db)
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=140, color_system=None)
    root = logging.getLogger()
    plain = logging.StreamHandler(io.StringIO())
    root.addHandler(plain)
    # A library logger with its own handler on the terminal (like dagster's): it must not
    # write past the live table either.
    terminal = io.StringIO()
    library = logging.getLogger("cicdllm.test.library")
    library.propagate = False
    own = logging.StreamHandler(terminal)
    library.addHandler(own)
    # logging's lastResort handler (its stream is a read-only property) attached by some library.
    odd = logging.getLogger("cicdllm.test.last_resort")
    odd.addHandler(logging.lastResort)
    monkeypatch.setattr(sys, "stderr", terminal)
    try:
        with ProgressDisplay(db, refresh_seconds=0.25, console=console) as display:
            assert plain not in root.handlers  # routed through the live console meanwhile
            display.step("local-a", "start")
            store.start_stage("local-a", "questions", total=8, unit="items")
            store.advance("local-a", "questions", done=3)
            logging.getLogger("cicdllm.test").warning("a log line during the run")
            library.warning("a library line during the run")
            deadline = time.monotonic() + 10
            while "3/8 items" not in buffer.getvalue() and time.monotonic() < deadline:
                time.sleep(0.1)
            display.step("local-a", "done")
        assert plain in root.handlers  # restored
        assert own.stream is terminal
    finally:
        root.removeHandler(plain)
        library.removeHandler(own)
        odd.removeHandler(logging.lastResort)
    text = buffer.getvalue()
    assert terminal.getvalue() == ""  # nothing bypassed the live console
    assert "a library line during the run" in text
    assert text.index("a library line during the run") < text.rindex("3/8 items")  # the table is redrawn below
    assert "3/8 items" in text and "questions" in text
    assert "speed" in text and "elapsed" in text
    assert "a log line during the run" in text
    assert "done" in text


def test_a_downstream_selection_leaves_out_the_opt_in_evaluation_assets() -> None:
    from cicdllm_assets.definitions import defs

    plan = plan_selection(defs, "key:training_dataset+", "main_job", "dataset_job")
    assert plan.names == ["training_dataset"]  # adapter/evaluation run only via cicdllm finetune/eval
    with pytest.raises(SelectionError, match="outside the pipeline jobs"):
        plan_selection(defs, "key:adapter", "main_job", "dataset_job")
