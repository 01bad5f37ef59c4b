"""What the CLI subcommands share: exit codes and turning bad input into a usage error."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NoReturn

import click

from cicdllm_assets.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from dagster import Definitions

logger = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def fail_usage(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with :data:`EXIT_USAGE` (bad input)."""
    click.echo(f"error: {message}", err=True)
    raise SystemExit(EXIT_USAGE)


def load_settings_or_exit() -> Settings:
    """The project settings; an invalid config is a usage error."""
    try:
        return load_settings()
    except ConfigError as exc:
        fail_usage(str(exc))


def load_definitions_or_exit() -> Definitions:
    """The code location for the CLI; a broken one is a usage error instead of a traceback."""
    from cicdllm_assets.runner.cli_defs import definitions_for_cli

    try:
        return definitions_for_cli()
    except Exception as exc:  # a broken code location: say so instead of a traceback
        logger.debug("loading definitions failed", exc_info=True)
        fail_usage(f"cannot load the Dagster definitions (cicdllm_assets.definitions): {type(exc).__name__}: {exc}")
