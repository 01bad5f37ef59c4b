"""`cicdllm doctor`: check that the configured repos, model, tokenizer, server, disk and
DAGSTER_HOME work here. Exit 0 when nothing fails (warnings allowed), 2 otherwise."""

from __future__ import annotations

import json

import click

from cicdllm_assets.cli.common import EXIT_USAGE, load_settings_or_exit
from cicdllm_assets.doctor import Check, run_checks

_MARK = {"ok": ("ok  ", "green"), "warn": ("warn", "yellow"), "fail": ("FAIL", "red")}


def report(checks: list[Check], as_json: bool) -> int:
    """Print the checks; return the exit code (2 if any failed)."""
    failed = [check for check in checks if check.level == "fail"]
    if as_json:
        click.echo(json.dumps({"ok": not failed, "checks": [c.to_dict() for c in checks]}, indent=2))
    else:
        for check in checks:
            mark, colour = _MARK[check.level]
            click.echo(f"{click.style(mark, fg=colour)}  {check.name}: {check.message}")
        click.echo(f"{len(failed)} problem(s) found" if failed else "all checks passed")
    return EXIT_USAGE if failed else 0


@click.command(name="doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.pass_context
def command(ctx: click.Context, as_json: bool) -> None:
    """Check repos, model, tokenizer, OpenAI server, disk space and DAGSTER_HOME."""
    settings = load_settings_or_exit()
    ctx.exit(report(run_checks(settings), as_json))
