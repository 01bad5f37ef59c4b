"""The ``cicdllm`` command: one click group, one module per subcommand."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from cicdllm_assets.cli import (
    backfill_cmd,
    config_cmd,
    doctor_cmd,
    export_cmd,
    finetune_cmd,
    model_cmd,
    repos_cmd,
    retry_cmd,
    run_cmd,
    status_cmd,
    workers_cmd,
)
from cicdllm_assets.cli.common import CliOptions


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cicdllm", prog_name="cicdllm", message="%(prog)s %(version)s")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="cicdllm.yaml to use (default: $CICDLLM_CONFIG or ./cicdllm.yaml).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """cicdllm: git repositories in, fine-tuning datasets out."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # handed down on the context (cli.common.load_cli_settings), never through os.environ
    ctx.obj = CliOptions(config_path=Path(config_path).expanduser().resolve() if config_path else None)


for _module in (
    run_cmd,
    status_cmd,
    export_cmd,
    repos_cmd,
    config_cmd,
    model_cmd,
    backfill_cmd,
    doctor_cmd,
    retry_cmd,
    workers_cmd,
):
    cli.add_command(_module.command)
for _command in finetune_cmd.commands:
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(standalone_mode=True))


if __name__ == "__main__":
    main()
