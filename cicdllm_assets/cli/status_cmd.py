"""`cicdllm status`: the live Textual viewer, or one snapshot (``--once``, ``--once --json``)."""

from __future__ import annotations

import json
import logging

import click
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from cicdllm_assets.cli.common import cli_config_path, load_cli_settings
from cicdllm_assets.config import ConfigError
from cicdllm_assets.status.collect import collect_status
from cicdllm_assets.status.model import Status
from cicdllm_assets.tui.format import human_bytes
from cicdllm_assets.tui.widgets import clock, progress_table, resources_table, run_cells, styled_status


@click.command(name="status")
@click.option("--once", is_flag=True, help="Print one snapshot and exit instead of the live viewer.")
@click.option("--json", "as_json", is_flag=True, help="With --once: print the snapshot as JSON (for scripts).")
@click.option("--no-runs", is_flag=True, help="With --once: skip reading runs from the Dagster instance.")
def command(once: bool, as_json: bool, no_runs: bool) -> None:
    """Show per-repo counts, stage progress, failures, recent runs and resources.

    Without options this opens the live viewer (keys: q quit, r refresh, f failures,
    l logs, c config, ? help). Exit status 0; 2 if the configuration is invalid.
    """
    if as_json and not once:
        raise click.UsageError("--json needs --once (the live viewer is interactive)")
    if not once:
        from cicdllm_assets.tui.app import run_status_app

        run_status_app(cli_config_path())
        return
    try:
        settings = load_cli_settings()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(2) from exc
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Dagster's storage migrations are noise here
    status = collect_status(settings, include_runs=not no_runs)
    if as_json:
        click.echo(json.dumps(status.to_dict(), indent=2, default=str))
        return
    console = Console()
    console.print(render_once(status, console.width))


def render_once(status: Status, width: int = 160) -> Group:
    """The ``--once`` view: repos, progress, failures by category, runs, resources.

    Narrow terminals (< 110 columns) leave out the head commit and size columns.
    """
    wide = width >= 110
    repos = Table(title="Repositories", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    names = ["Repo", "Head", "Size"] if wide else ["Repo"]
    names += ["Kept", "Skip", "Chunks", "Qs", "Answers", "OK", "Fail", "Last run"]
    for name in names:
        repos.add_column(
            name, justify="left" if name in ("Repo", "Head", "Last run") else "right", no_wrap=name in ("Repo", "Head")
        )
    for repo in status.repos:
        run = repo.last_run
        last = Text.assemble(clock(run.created_at), " ", styled_status(run.status)) if run else Text("-")
        head: list[RenderableType] = [repo.repo]
        if wide:
            head += [(repo.head_commit or "-")[:10], human_bytes(repo.size_bytes)]
        repos.add_row(
            *head,
            str(repo.files_kept),
            str(repo.files_skipped),
            str(repo.chunks),
            str(repo.questions),
            str(repo.answers),
            f"{repo.qa_accepted}/{repo.qa_pairs}",
            str(repo.failures),
            last,
        )
    if not status.repos:
        hint = Text("No repositories yet: list them in repos.txt, then `cicdllm run`.", style="dim")
        parts: list[RenderableType] = [hint, progress_table(status)]
    else:
        parts = [repos, progress_table(status)]
    if status.failure_categories:
        failures = Table(title="Failures by category", title_justify="left")
        failures.add_column("Category")
        failures.add_column("Count", justify="right")
        for category, count in status.failure_categories.items():
            failures.add_row(category, str(count))
        parts.append(failures)
    if status.run_failures:
        failed = Table(title="Failed runs", title_justify="left")
        for name in ("Run", "Partition", "Step", "Error"):
            failed.add_column(name, overflow="fold" if name == "Error" else "ellipsis")
        for failure in status.run_failures:
            failed.add_row(failure.item, failure.repo, failure.stage, failure.message.splitlines()[0][:300])
        parts.append(failed)
    if status.runs:
        runs = Table(title="Recent Dagster runs", title_justify="left")
        for name in ("Run", "Job", "Partition", "Status", "Started", "Duration"):
            runs.add_column(name)
        for run in status.runs:
            runs.add_row(*run_cells(run))
        parts.append(runs)
    if status.evaluations:
        from cicdllm_assets.cli.finetune_cmd import evaluations_table

        parts.append(evaluations_table(status.evaluations, title="Fine-tuning evaluations"))
    parts.append(resources_table(status))
    for repo in status.repos:
        for warning in repo.warnings:
            parts.append(Text(f"warning: {repo.repo}: {warning}", style="yellow"))
    for problem in status.errors:
        parts.append(Text(f"warning: {problem}", style="yellow"))
    return Group(*parts)
