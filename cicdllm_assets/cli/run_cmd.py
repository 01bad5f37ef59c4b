"""`cicdllm run`: sync repos.txt, run each repo partition through the chain, then export.

Runs go through the Dagster instance at ``storage.dagster_home`` (or ``$DAGSTER_HOME``), so
they appear in ``dagster dev``. Exit codes: 0 every repo done, incomplete (generation items
still without a result: the summary says how many) or unchanged, 1 a repo or the dataset step
failed, 2 bad input (config, repos.txt, selection, unknown repo), 130 Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import signal
import warnings
from collections.abc import Mapping
from types import FrameType
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cicdllm_assets.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    fail_usage,
    load_definitions_or_exit,
    load_settings_or_exit,
)
from cicdllm_assets.runner.outcome import RunSummary, StepOutcome

logger = logging.getLogger(__name__)


_STYLE = {"done": "green", "incomplete": "yellow", "unchanged": "cyan", "failed": "red", "not_run": "dim"}


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "-"


def _detail(outcome: StepOutcome) -> str:
    if outcome.status == "failed":
        return outcome.reason or "failed"
    parts: list[str] = []
    if outcome.previous_head_commit and outcome.head_commit and outcome.previous_head_commit != outcome.head_commit:
        parts.append(f"{_short(outcome.previous_head_commit)} -> {_short(outcome.head_commit)}")
    elif outcome.head_commit:
        parts.append(f"at {_short(outcome.head_commit)}")
    if outcome.rows:
        parts.append(", ".join(f"{name} {count}" for name, count in outcome.rows.items()))
    if outcome.item_failures:
        parts.append(f"{outcome.item_failures} item failure(s)")
    if outcome.retries:
        parts.append(f"{outcome.retries} step retr{'y' if outcome.retries == 1 else 'ies'}")
    if outcome.reason and outcome.status != "done":
        parts.append(outcome.reason)
    return "; ".join(parts)


def render_summary(summary: RunSummary, console: Console) -> None:
    """A table: one line per repo (and the dataset step) with status and details."""
    table = Table(title="cicdllm run: summary")
    for column in ("repo", "status", "seconds", "details", "run"):
        table.add_column(column, overflow="fold")
    steps = [*summary.repos, *([summary.dataset] if summary.dataset else [])]
    for outcome in steps:
        table.add_row(
            outcome.name,
            Text(outcome.status, style=_STYLE.get(outcome.status, "")),
            f"{outcome.duration_seconds:.1f}",
            _detail(outcome),
            (outcome.run_id or "-")[:8],
        )
    console.print(table)
    for outcome in steps:
        for warning in outcome.warnings:
            # a repo's warnings name their asset; the dataset step's asset is the step itself
            about = warning if warning.startswith(f"{outcome.name}: ") else f"{outcome.name}: {warning}"
            console.print(Text(f"warning: {about}", style="yellow"))
    counts = summary.to_dict()["counts"]
    line = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in counts.items() if n)
    if summary.interrupted:
        line += " (interrupted)"
    console.print(line or "nothing to run")


def quiet_library_noise() -> None:
    """Hide Dagster's beta warnings and storage-migration chatter from CLI output."""
    from dagster import BetaWarning, PreviewWarning

    warnings.filterwarnings("ignore", category=BetaWarning)
    warnings.filterwarnings("ignore", category=PreviewWarning)
    for name in ("alembic", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _sigterm_as_interrupt(_signo: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def install_stop_signals() -> None:
    """Ctrl-C (SIGINT, even if the shell started us with it ignored) and ``kill`` (SIGTERM)
    both stop a run: the current Dagster run is marked canceled, the summary says so."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def exit_with_summary(
    ctx: click.Context, summary: RunSummary, as_json: bool, json_extra: Mapping[str, Any] | None = None
) -> NoReturn:
    """Print the summary (JSON with ``json_extra`` fields, or the table) and exit with its code."""
    if as_json:
        click.echo(json.dumps({**(json_extra or {}), **summary.to_dict()}, indent=2, sort_keys=True))
    else:
        render_summary(summary, Console())
    if summary.interrupted:
        ctx.exit(EXIT_INTERRUPTED)
    ctx.exit(0 if summary.ok else EXIT_FAILED)


@click.command(name="run")
@click.option(
    "--repo", "repos", multiple=True, metavar="KEY", help="Repo partition key to run (repeatable; default all)."
)
@click.option(
    "--select",
    "select",
    default=None,
    metavar="SELECTION",
    help='Dagster asset selection, e.g. "repositories+", "key:questions", "group:ingest" (default: all).',
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.pass_context
def command(ctx: click.Context, repos: tuple[str, ...], select: str | None, as_json: bool) -> None:
    """Sync repos.txt, run each repo through the pipeline, then build the training dataset."""
    quiet_library_noise()
    from cicdllm_assets.repos.repos_file import ReposFileError
    from cicdllm_assets.runner.instance import InstanceError, open_instance, sync_partitions
    from cicdllm_assets.runner.pipeline import RunPlanError, choose_partitions, run_pipeline
    from cicdllm_assets.runner.progress import ProgressDisplay
    from cicdllm_assets.runner.selection import SelectionError, plan_selection

    settings = load_settings_or_exit()
    try:
        instance = open_instance(settings)
        added, removed = sync_partitions(instance, settings)
    except (InstanceError, ReposFileError) as exc:
        fail_usage(str(exc))
    if added or removed:
        logger.info("repo partitions: added %s, removed %s", added or "none", removed or "none")

    from cicdllm_assets.automation.jobs import dataset_job, main_job

    defs = load_definitions_or_exit(settings)

    try:
        plan = plan_selection(defs, select, main_job.name, dataset_job.name)
        partitions = choose_partitions(instance, repos)
    except (SelectionError, RunPlanError) as exc:
        fail_usage(str(exc))
    if plan.repo_keys and not partitions:
        fail_usage(f"no repositories to run: {settings.repos_file} lists none")

    install_stop_signals()
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    console = Console(stderr=True)
    display = ProgressDisplay(settings.state_target, settings.config.ui.refresh_seconds, console=console)
    with display:
        summary = run_pipeline(
            defs,
            instance,
            settings,
            partitions,
            plan,
            on_step=display.step,
            log_level="DEBUG" if verbose else "CRITICAL",
        )
    exit_with_summary(ctx, summary, as_json)
