"""``cicdllm run``: one Dagster run per repo partition, then the dataset step.

Runs execute **in this process** (``JobDefinition.execute_in_process``) against the
persistent instance at ``settings.dagster_home``, so they are recorded like any other run
and appear in ``dagster dev``. In-process execution is deliberate: the repos are run one
after the other, and the LLM backend (an MLX model of hundreds of MB) stays loaded in this
process across repos instead of being loaded again by a fresh run process per repo (the
MLX resource normally frees the model when a run ends; :mod:`.cli_defs` keeps it, and it is
freed once, at the end).
Parallel repo runs are what ``dagster dev`` backfills (``cicdllm backfill``) are for.

A failing repo does not stop the others: each run is isolated, its step failures are
retried by the jobs' retry policy, and its final failure message lands in the summary.

Ctrl-C stops at once. Dagster turns an interrupt inside a step into a *retry* when the job
has a retry policy (right for a preempted pod, wrong for a user at a terminal), so each run
executes in a worker thread, where Dagster leaves signal handling alone, and the main thread
keeps the interrupt: it marks the run canceled in the instance and returns. Every finished
LLM item is already committed to the ledger, so the next run resumes where this one stopped.
Runs left ``STARTED`` by a ``cicdllm`` process that died (``kill -9``, a crash) are marked
failed on the next start (:func:`reap_orphaned_runs`), so they do not block automation.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    RunsFilter,
)
from dagster._core.events import DagsterEvent
from dagster._core.execution.execute_in_process_result import ExecuteInProcessResult
from dagster._core.utils import make_new_run_id

from cicdllm_assets.automation.jobs import dataset_job, main_job
from cicdllm_assets.config import Settings
from cicdllm_assets.errors import CicdllmError
from cicdllm_assets.llm.mlx_backend import release_models
from cicdllm_assets.partitions import REPOS_PARTITIONS_NAME
from cicdllm_assets.runner.liveness import HOST_TAG, PID_TAG, TRIGGER_TAG, dead_process
from cicdllm_assets.runner.outcome import RunSummary, StepOutcome
from cicdllm_assets.runner.selection import PlannedSelection
from cicdllm_assets.storage.state import STATE_ERRORS, StateStore

logger = logging.getLogger(__name__)

DATA_VERSION_TAG = "dagster/data_version"
DATA_VERSION_IS_USER_PROVIDED_TAG = "dagster/data_version_is_user_provided"
HEAD_ASSET = AssetKey("repositories")
MAX_REASON_CHARS = 2000

_LIVE_STATUSES = [DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.NOT_STARTED]

StepCallback = Callable[[str, str], None]
"""Called with (name, event) where event is "start" or the final status."""


class RunPlanError(CicdllmError, ValueError):
    """The requested repos are not known partitions."""


@dataclass(frozen=True)
class _Snapshot:
    head_commit: str | None
    rows: dict[str, int]
    versions: dict[str, str]
    """Content data versions the assets reported themselves (Dagster's default one changes every run)."""
    warnings: list[str]


def choose_partitions(instance: DagsterInstance, requested: Sequence[str]) -> list[str]:
    """The repo partitions to run: ``requested`` (validated, in the given order) or all."""
    known = list(instance.get_dynamic_partitions(REPOS_PARTITIONS_NAME))
    if not requested:
        return known
    unknown = [key for key in requested if key not in known]
    if unknown:
        listing = ", ".join(known) if known else "none (is repos.txt empty?)"
        raise RunPlanError(f"unknown repo partition(s) {unknown}; known: {listing}")
    return list(dict.fromkeys(requested))


def _latest_materialization(instance: DagsterInstance, key: AssetKey, partition: str | None) -> object | None:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    return records[0].asset_materialization if records else None


def _rows_of(materialization: object | None) -> int | None:
    """The asset's item count: ``exported_pairs`` for the dataset (its table is a per-repo x split x
    theme summary), else its table's row count."""
    metadata = getattr(materialization, "metadata", None) or {}
    entry = metadata.get("exported_pairs") or metadata.get("dagster/partition_row_count")
    entry = entry or metadata.get("dagster/row_count")
    value = getattr(entry, "value", entry)
    return int(value) if isinstance(value, int | float) else None


def _snapshot(instance: DagsterInstance, keys: Sequence[AssetKey], partition: str | None) -> _Snapshot:
    head: str | None = None
    rows: dict[str, int] = {}
    versions: dict[str, str] = {}
    warnings: list[str] = []
    for key in keys:
        materialization = _latest_materialization(instance, key, partition)
        if materialization is None:
            continue
        warning = (getattr(materialization, "metadata", None) or {}).get("warning")
        if warning is not None:
            warnings.append(f"{key.to_user_string()}: {getattr(warning, 'value', warning)}")
        count = _rows_of(materialization)
        if count is not None:
            rows[key.to_user_string()] = count
        tags = getattr(materialization, "tags", None) or {}
        if key == HEAD_ASSET:
            head = tags.get(DATA_VERSION_TAG)
        if tags.get(DATA_VERSION_IS_USER_PROVIDED_TAG) == "true" and DATA_VERSION_TAG in tags:
            versions[key.to_user_string()] = tags[DATA_VERSION_TAG]
    return _Snapshot(head_commit=head, rows=rows, versions=versions, warnings=warnings)


def _step_error_text(event: DagsterEvent) -> str:
    """The most specific message of a step failure: a ``Failure`` description, else the
    innermost cause (past Dagster's "Exceeded max_retries" / step-execution wrappers)."""
    data = event.step_failure_data
    if data is None:
        return event.message or "step failed"
    if data.user_failure_data is not None and data.user_failure_data.description:
        return data.user_failure_data.description.strip()
    error = data.error
    text = "step failed"
    while error is not None:
        text = error.message.strip() or text
        error = error.cause
    return text


def _failure_reason(events: Sequence[DagsterEvent]) -> str:
    messages = [f"{e.step_key}: {_step_error_text(e)}" for e in events if e.is_step_failure]
    if not messages:
        messages = [e.message or "run failed" for e in events if e.event_type == DagsterEventType.RUN_FAILURE]
    reason = "; ".join(messages) or "run failed"
    return reason[:MAX_REASON_CHARS]


def _item_failures(settings: Settings, repo: str, since: float) -> int:
    try:
        with StateStore(settings.state_target) as state:
            rows = state.query("SELECT COUNT(*) FROM failures WHERE repo = ? AND created_at >= ?", (repo, since))
    except STATE_ERRORS:
        return 0
    return int(rows[0][0]) if rows else 0


GENERATION_ASSETS = ("questions", "answers")


def _missing_items(events: Sequence[DagsterEvent]) -> int:
    """Generation items left without a result by this run: ``failed`` + ``exhausted`` metadata of
    the questions/answers materializations it produced."""
    missing = 0
    for event in events:
        if event.event_type != DagsterEventType.ASSET_MATERIALIZATION or event.asset_key is None:
            continue
        if event.asset_key.to_user_string() not in GENERATION_ASSETS:
            continue
        metadata = event.step_materialization_data.materialization.metadata
        for name in ("failed", "exhausted"):
            value = getattr(metadata.get(name), "value", 0)
            missing += int(value) if isinstance(value, int | float) else 0
    return missing


def _classify(outcome: StepOutcome, before: _Snapshot, after: _Snapshot) -> None:
    outcome.previous_head_commit = before.head_commit
    outcome.head_commit = after.head_commit
    outcome.previous_rows = before.rows
    outcome.rows = after.rows
    outcome.warnings = after.warnings
    head_same = before.head_commit is not None and before.head_commit == after.head_commit
    rows_same = bool(before.rows) and all(before.rows.get(name) == count for name, count in after.rows.items())
    content_same = all(before.versions.get(name) == version for name, version in after.versions.items())
    if (head_same or HEAD_ASSET.to_user_string() not in after.rows) and rows_same and content_same:
        outcome.status = "unchanged"
        outcome.reason = "head commit unchanged, no new items" if head_same else "no new items"
    else:
        outcome.status = "done"
    if outcome.missing_items:
        outcome.status = "incomplete"
        outcome.reason = (
            f"{outcome.missing_items} generation item(s) without a result; outages are retried by the next"
            " run, `cicdllm retry-failed` gives items that ran out of attempts another try"
        )


def free_pool_slots(instance: DagsterInstance, run_id: str) -> None:
    """Give back the pool slots (``llm``) a run that ended outside its steps still holds.

    The daemon does this for the runs it watches; a ``cicdllm run`` has no daemon, so a
    canceled or reaped run would otherwise keep the slot and stall every later generation step.
    """
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        storage.free_concurrency_slots_for_run(run_id)


def reap_orphaned_runs(instance: DagsterInstance) -> list[str]:
    """Mark failed the CLI runs on this host still ``STARTED`` whose process is gone."""
    reaped: list[str] = []
    for run in instance.get_runs(RunsFilter(statuses=_LIVE_STATUSES, tags={TRIGGER_TAG: "cli"})):
        pid = dead_process(run.tags)
        if pid is None:
            continue
        instance.report_run_failed(run, f"the cicdllm process that ran it (pid {pid}) is gone")
        free_pool_slots(instance, run.run_id)
        reaped.append(run.run_id)
        logger.warning("marked orphaned run %s (pid %s) as failed", run.run_id, pid)
    return reaped


def _cancel(instance: DagsterInstance, settings: Settings, run_id: str, partition: str | None) -> None:
    """After Ctrl-C: the run is canceled in the instance, its running stages are marked."""
    run = instance.get_run_by_id(run_id)
    if run is not None and run.status in _LIVE_STATUSES:
        instance.report_run_canceled(run, "interrupted by the user (Ctrl-C / SIGTERM)")
        free_pool_slots(instance, run_id)
    if partition is None:
        return
    try:
        with StateStore(settings.state_target) as state:
            for row in state.progress(partition):
                if row.status == "running":
                    state.finish_stage(partition, row.stage, "interrupted")
            state.log_event("warning", "run interrupted by the user", repo=partition)
    except STATE_ERRORS as exc:
        logger.debug("could not mark interrupted stages: %s", exc)


def _in_worker(fn: Callable[[], ExecuteInProcessResult]) -> ExecuteInProcessResult:
    """Call ``fn`` in a daemon thread; the main thread waits interruptibly."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc

    worker = threading.Thread(target=target, name="cicdllm-run", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
    if "error" in box:
        raise box["error"]
    result: ExecuteInProcessResult = box["result"]
    return result


def _execute(
    defs: Definitions,
    instance: DagsterInstance,
    settings: Settings,
    job_name: str,
    keys: Sequence[AssetKey],
    partition: str | None,
    name: str,
    log_level: str,
) -> StepOutcome:
    outcome = StepOutcome(name=name, status="not_run")
    before = _snapshot(instance, keys, partition)
    started = time.time()
    tags = {TRIGGER_TAG: "cli", PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    run_id = make_new_run_id()
    outcome.run_id = run_id
    try:
        job = defs.resolve_job_def(job_name)
        result = _in_worker(
            lambda: job.execute_in_process(
                instance=instance,
                partition_key=partition,
                asset_selection=list(keys),
                raise_on_error=False,
                run_id=run_id,
                tags=tags,
                run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
            )
        )
    except KeyboardInterrupt:
        _cancel(instance, settings, run_id, partition)
        raise
    except Exception as exc:  # a run that could not even start (bad resources, storage errors)
        outcome.run_id = run_id if instance.get_run_by_id(run_id) is not None else None
        outcome.status = "failed"
        outcome.reason = f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]
        outcome.duration_seconds = round(time.time() - started, 3)
        logger.exception("%s: run did not start", name)
        return outcome
    outcome.run_id = result.run_id
    outcome.duration_seconds = round(time.time() - started, 3)
    events = result.all_events
    outcome.retries = sum(1 for e in events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY)
    if partition is not None:
        outcome.item_failures = _item_failures(settings, partition, started)
    after = _snapshot(instance, keys, partition)
    outcome.missing_items = _missing_items(events)
    if result.success:
        _classify(outcome, before, after)
    else:
        outcome.status = "failed"
        outcome.reason = _failure_reason(events)
        outcome.previous_head_commit = before.head_commit
        outcome.head_commit = after.head_commit
        outcome.rows = after.rows
        outcome.warnings = after.warnings
    return outcome


def run_pipeline(
    defs: Definitions,
    instance: DagsterInstance,
    settings: Settings,
    partitions: Sequence[str],
    plan: PlannedSelection,
    on_step: StepCallback | None = None,
    log_level: str = "CRITICAL",
) -> RunSummary:
    """Run the selected chain for each repo partition, then the dataset step.

    The dataset step runs when it is selected and at least one repo succeeded (or no
    repo step was selected). Ctrl-C cancels the current run and marks the remaining repos
    ``not_run``; the summary is then ``interrupted``.
    """
    notify = on_step or (lambda _name, _event: None)
    summary = RunSummary(selection=plan.names)
    pending = list(partitions) if plan.repo_keys else []
    reap_orphaned_runs(instance)
    try:
        while pending:
            partition = pending[0]
            notify(partition, "start")
            outcome = _execute(defs, instance, settings, main_job.name, plan.repo_keys, partition, partition, log_level)
            summary.repos.append(outcome)
            pending.pop(0)
            notify(partition, outcome.status)
        if plan.dataset_keys:
            succeeded = [r for r in summary.repos if r.status in ("done", "incomplete", "unchanged")]
            if plan.repo_keys and not succeeded:
                summary.dataset = StepOutcome(name="training_dataset", status="not_run", reason="no repo succeeded")
            else:
                notify("training_dataset", "start")
                summary.dataset = _execute(
                    defs,
                    instance,
                    settings,
                    dataset_job.name,
                    plan.dataset_keys,
                    None,
                    "training_dataset",
                    log_level,
                )
                notify("training_dataset", summary.dataset.status)
    except KeyboardInterrupt:
        summary.interrupted = True
        summary.repos.extend(StepOutcome(name=p, status="not_run", reason="interrupted") for p in pending)
        if plan.dataset_keys and summary.dataset is None:
            summary.dataset = StepOutcome(name="training_dataset", status="not_run", reason="interrupted")
    finally:
        release_models()  # the MLX models kept across repos (see cli_defs)
    return summary
