"""`cicdllm backfill`: re-run chosen repos, as a Dagster backfill when a webserver is up.

With ``dagster dev`` running (``--url``, default http://127.0.0.1:3000) the backfill is
launched through its GraphQL API, runs in the daemon (one run per repo, in parallel up to
the run queue limit) and shows at ``<url>/runs/b/<id>``. Without a webserver, the repos run
here, in process, one after the other (like ``cicdllm run``).

Exit codes: 0 launched (or, with ``--wait``/in process, succeeded), 1 failed or timed out,
2 bad input (config, repos.txt, selection, unknown repo), 130 interrupted (in process).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import click

from cicdllm_assets.cli.common import EXIT_FAILED, fail_usage, load_definitions_or_exit, load_settings_or_exit
from cicdllm_assets.cli.run_cmd import exit_with_summary, install_stop_signals, quiet_library_noise

logger = logging.getLogger(__name__)

URL_ENV = "CICDLLM_DAGSTER_URL"


def _emit(data: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in lines:
            click.echo(line)


@click.command(name="backfill")
@click.option("--repo", "repos", multiple=True, required=True, metavar="KEY", help="Repo partition (repeatable).")
@click.option(
    "--select",
    "select",
    default=None,
    metavar="SELECTION",
    help='Dagster asset selection of repo-partitioned assets, e.g. "group:ingest" (default: the whole chain).',
)
@click.option(
    "--url",
    default=lambda: os.environ.get(URL_ENV, "http://127.0.0.1:3000"),
    show_default="http://127.0.0.1:3000 or $CICDLLM_DAGSTER_URL",
    help="The Dagster webserver (dagster dev).",
)
@click.option("--wait/--no-wait", default=False, help="Wait for the backfill to finish (webserver mode).")
@click.option("--timeout", type=click.FloatRange(min=1), default=3600.0, show_default=True, help="Seconds to --wait.")
@click.option("--in-process", is_flag=True, help="Run here even if a webserver is up.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.pass_context
def command(
    ctx: click.Context,
    repos: tuple[str, ...],
    select: str | None,
    url: str,
    wait: bool,
    timeout: float,
    in_process: bool,
    as_json: bool,
) -> None:
    """Backfill the chosen repo partitions (via the running webserver, else in process)."""
    quiet_library_noise()
    from cicdllm_assets.automation.jobs import MAIN_SELECTION, dataset_job, main_job
    from cicdllm_assets.runner.backfill import (
        FINISHED_OK,
        BackfillError,
        GraphQLClient,
        fetch_partition_keys,
        launch_backfill,
        wait_for_backfill,
    )
    from cicdllm_assets.runner.selection import SelectionError, plan_selection

    settings = load_settings_or_exit()
    defs = load_definitions_or_exit(settings)
    try:
        plan = plan_selection(defs, select or MAIN_SELECTION, main_job.name, dataset_job.name)
    except SelectionError as exc:
        fail_usage(str(exc))
    if plan.dataset_keys:
        names = [key.to_user_string() for key in plan.dataset_keys]
        fail_usage(
            f"{names} not partitioned by repo, so not backfillable per repo; "
            "use `cicdllm run --select key:training_dataset` (automation also rebuilds it)"
        )
    if not plan.repo_keys:
        fail_usage(f"selection {plan.text!r} has no repo-partitioned asset")
    wanted = list(dict.fromkeys(repos))

    client = GraphQLClient(url)
    try:
        if not in_process and client.is_up():
            try:
                known = fetch_partition_keys(client, plan.repo_keys[0])
                unknown = [key for key in wanted if key not in known]
                if unknown:
                    fail_usage(
                        f"unknown repo partition(s) {unknown} on {url}; known: {', '.join(known) or 'none'}"
                        " (add them to repos.txt; the repos sensor or `cicdllm repos sync` registers them)"
                    )
                launch = launch_backfill(client, wanted, plan.repo_keys, title=f"cicdllm backfill {' '.join(wanted)}")
            except BackfillError as exc:
                click.echo(f"error: {exc}", err=True)
                ctx.exit(EXIT_FAILED)
            data: dict[str, Any] = {
                "mode": "webserver",
                "backfill_id": launch.backfill_id,
                "url": launch.watch_url,
                "overview_url": f"{client.url}/overview/backfills",
                "partitions": launch.partitions,
                "assets": launch.assets,
                "status": "REQUESTED",
            }
            lines = [
                f"backfill {launch.backfill_id} launched: {len(wanted)} repo(s) x {len(launch.assets)} asset(s)",
                f"watch it at {launch.watch_url} (all backfills: {client.url}/overview/backfills)",
            ]
            code = 0
            if wait:
                try:
                    status, error = wait_for_backfill(client, launch.backfill_id, timeout)
                except BackfillError as exc:
                    status, error = "UNKNOWN", str(exc)
                data["status"] = status
                data["error"] = error
                lines.append(f"backfill {launch.backfill_id}: {status}" + (f": {error}" if error else ""))
                code = 0 if status in FINISHED_OK else EXIT_FAILED
            _emit(data, as_json, lines)
            ctx.exit(code)
    finally:
        client.close()

    # No webserver: run the partitions here, like `cicdllm run`.
    from cicdllm_assets.repos.repos_file import ReposFileError
    from cicdllm_assets.runner.instance import InstanceError, open_instance, sync_partitions
    from cicdllm_assets.runner.pipeline import RunPlanError, choose_partitions, run_pipeline

    if not in_process:
        click.echo(f"no Dagster webserver at {url}: running in process", err=True)
    try:
        instance = open_instance(settings)
        sync_partitions(instance, settings)
        partitions = choose_partitions(instance, wanted)
    except (InstanceError, ReposFileError, RunPlanError) as exc:
        fail_usage(str(exc))
    install_stop_signals()
    summary = run_pipeline(defs, instance, settings, partitions, plan)
    exit_with_summary(ctx, summary, as_json, {"mode": "in_process"})
