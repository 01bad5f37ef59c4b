"""`cicdllm config validate|show|edit`."""

from __future__ import annotations

import json
import sys

import click
from ruamel.yaml import YAML

from cicdllm_assets.cli.common import cli_config_path, load_cli_settings
from cicdllm_assets.config import ConfigError, masked_dump

EXIT_INVALID_CONFIG = 2


@click.group(name="config")
def command() -> None:
    """Validate, show or edit cicdllm.yaml."""


@command.command(name="validate")
@click.option("--deep", is_flag=True, help="Also run the `cicdllm doctor` checks (repos, model, server, disk).")
def validate(deep: bool) -> None:
    """Exit 0 if the config is valid; else print each bad field and exit 2."""
    try:
        settings = load_cli_settings()
    except ConfigError as exc:
        click.echo(f"invalid: {exc.source}", err=True)
        for issue in exc.issues:
            click.echo(f"  {issue.render()}", err=True)
        sys.exit(EXIT_INVALID_CONFIG)
    from cicdllm_assets.generation.prompts import prompt_problems

    problems = prompt_problems(settings.config.generation, settings.prompts_dir)
    if problems:
        click.echo(f"invalid prompt templates in {settings.prompts_dir}:", err=True)
        for problem in problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(EXIT_INVALID_CONFIG)
    click.echo(f"valid: {settings.path or '<defaults>'}")
    if deep:
        from cicdllm_assets.cli.doctor_cmd import report
        from cicdllm_assets.doctor import run_checks

        sys.exit(report(run_checks(settings), as_json=False))


@command.command(name="show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
def show(as_json: bool) -> None:
    """Print the effective config (file + environment overrides), secrets masked."""
    try:
        settings = load_cli_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    data = masked_dump(settings.config)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"# effective configuration from {settings.path or '<defaults>'}")
    YAML().dump(data, sys.stdout)


@command.command(name="edit")
def edit() -> None:
    """Open the configuration editor (a screen of the status viewer)."""
    from cicdllm_assets.tui.app import run_config_editor

    run_config_editor(cli_config_path())
