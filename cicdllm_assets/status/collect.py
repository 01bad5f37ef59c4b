"""Collect the status of a cicdllm project without ever blocking a writer.

Sources, all read-only: the asset tables and the state store (:mod:`.readers`), the Dagster
instance (:mod:`.runs`) and psutil (CPU, memory, battery). Every source is optional: a
missing file, table or column counts as zero, a lock is retried briefly, and a source that
still fails is reported in ``Status.errors`` rather than raised.
"""

from __future__ import annotations

import os
import time

import psutil

from cicdllm_assets.config import Settings
from cicdllm_assets.discovery.discover import no_files_kept_warning
from cicdllm_assets.finetune.history import HistoryRow, read_history
from cicdllm_assets.performance.battery import BatteryReader, battery_status
from cicdllm_assets.status.model import (
    EventInfo,
    FailureInfo,
    RepoStatus,
    ResourceInfo,
    RunInfo,
    StageStatus,
    Status,
)
from cicdllm_assets.status.readers import (
    read_events,
    read_failures,
    read_ledger_counts,
    read_repo_info,
    read_stage_progress,
    read_table_counts,
    read_tokens_per_second,
    summarize_stages,
)
from cicdllm_assets.status.runs import read_dynamic_partitions, read_run_failures, read_runs
from cicdllm_assets.storage.llm_load import LLMLoad, read_llm_load
from cicdllm_assets.storage.state import STATE_ERRORS, StateStore, open_state_readonly

#: Repo names unpartitioned assets report progress under; shown as stages, not as repos.
PSEUDO_REPOS = frozenset({"*", "__all__", ""})
#: Recorded evaluations a status snapshot keeps (the most recent).
EVALUATIONS_SHOWN = 10
SQLITE_TIMEOUT_SECONDS = 2.0


def read_resources(
    settings: Settings, con: StateStore | None, battery_reader: BatteryReader | None = None
) -> ResourceInfo:
    """CPU, memory and battery (with the pause state recorded by runs)."""
    memory = psutil.virtual_memory()
    return ResourceInfo(
        cpu_percent=float(psutil.cpu_percent(interval=None)),
        cpu_count=os.cpu_count() or 1,
        memory_percent=float(memory.percent),
        memory_used=int(memory.used),
        memory_total=int(memory.total),
        battery=battery_status(settings.config.performance, con, battery_reader),
    )


def collect_status(
    settings: Settings,
    *,
    include_runs: bool = True,
    battery_reader: BatteryReader | None = None,
    failures_limit: int = 500,
) -> Status:
    """A full status snapshot. Never raises for missing or busy sources: see ``errors``."""
    now = time.time()
    errors: list[str] = []
    ui = settings.config.ui
    counts = read_table_counts(settings.tables_dir, errors)

    stages: list[StageStatus] = []
    failures: list[FailureInfo] = []
    failure_counts: dict[str, dict[str, int]] = {}
    events: list[EventInfo] = []
    heads: dict[str, str | None] = {}
    ledger_counts: dict[str, dict[str, int]] = {}
    tokens_per_second: float | None = None
    evaluations: list[HistoryRow] = []
    llm_load: list[LLMLoad] = []
    con: StateStore | None = None
    try:
        con = open_state_readonly(settings.state_target, int(SQLITE_TIMEOUT_SECONDS * 1000))
        if con is not None:
            stages = read_stage_progress(con, now)
            failures, failure_counts = read_failures(con, failures_limit)
            events = read_events(con, ui.log_tail_lines)
            heads = read_repo_info(con)
            ledger_counts = read_ledger_counts(con)
            tokens_per_second = read_tokens_per_second(con, 300.0, now)
            evaluations = read_history(con)[-EVALUATIONS_SHOWN:]
            running = {(s.repo, s.stage) for s in stages if s.status == "running"}
            llm_load = [load for key, load in sorted(read_llm_load(con).items()) if key in running]
    except STATE_ERRORS as exc:
        errors.append(f"state store: {exc}")

    partitions: list[str] = []
    runs: list[RunInfo] = []
    run_failures: list[FailureInfo] = []
    last_runs: dict[str, RunInfo] = {}
    if include_runs:
        try:
            partitions = read_dynamic_partitions(settings.dagster_home)
        except Exception as exc:  # Dagster storage may be mid-migration or locked
            errors.append(f"dagster partitions: {exc}")

    names = set(counts) | {s.repo for s in stages if s.repo} | set(heads) | set(failure_counts) | set(partitions)
    names -= PSEUDO_REPOS  # unpartitioned stages (training_dataset) are not repos
    if include_runs:
        try:
            runs, last_runs = read_runs(settings.dagster_home, ui.recent_runs, sorted(names))
            run_failures = read_run_failures(settings.dagster_home, runs)
        except Exception as exc:
            errors.append(f"dagster runs: {exc}")

    repos = []
    for name in sorted(names):
        repo = RepoStatus(repo=name)
        for key, value in counts.get(name, {}).items():
            setattr(repo, key, value)
        if heads.get(name) and not repo.head_commit:
            repo.head_commit = heads[name]
        repo.failures_by_category = dict(sorted(failure_counts.get(name, {}).items()))
        repo.failures = sum(repo.failures_by_category.values())
        repo.last_run = last_runs.get(name)
        repo.stages = [s for s in stages if s.repo == name]
        for stage in repo.stages:
            # Until a generation stage finishes, its table lags behind: count from the ledger.
            if stage.stage in ("questions", "answers") and stage.status != "done":
                generated = ledger_counts.get(name, {}).get(stage.stage, 0)
                setattr(repo, stage.stage, max(getattr(repo, stage.stage), generated))
        discovered = any(s.stage == "source_files" and s.status == "done" for s in repo.stages)
        if discovered and repo.files_kept == 0:
            repo.warnings.append(no_files_kept_warning(repo.files_skipped))
        repos.append(repo)

    categories: dict[str, int] = {}
    for per_repo in failure_counts.values():
        for category, n in per_repo.items():
            categories[category] = categories.get(category, 0) + n

    try:
        resources = read_resources(settings, con, battery_reader)
    finally:
        if con is not None:
            con.close()
    return Status(
        generated_at=now,
        config_path=str(settings.path) if settings.path else None,
        data_dir=str(settings.data_dir),
        dagster_home=str(settings.dagster_home),
        repos=repos,
        stages=summarize_stages(stages, now),
        failures=failures,
        failure_categories=dict(sorted(categories.items(), key=lambda kv: (-kv[1], kv[0]))),
        events=events,
        runs=runs,
        run_failures=run_failures,
        resources=resources,
        tokens_per_second=tokens_per_second,
        errors=errors,
        evaluations=evaluations,
        llm_load=llm_load,
    )
