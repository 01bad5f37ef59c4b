"""What the CLI subcommands share: the ``--config`` choice, the settings loaded once per
invocation, exit codes and turning bad input into a usage error."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from cicdllm_assets.config import ConfigError, Settings, load_settings
from cicdllm_assets.config.loader import CONFIG_ENV

if TYPE_CHECKING:
    from dagster import Definitions

logger = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_SETTINGS_KEY = "cicdllm.settings"


@dataclass(frozen=True)
class CliOptions:
    """Options of the ``cicdllm`` group, on ``ctx.obj`` for every subcommand."""

    config_path: Path | None = None


def cli_config_path() -> Path | None:
    """The ``--config`` file of the current invocation (None: $CICDLLM_CONFIG or ./cicdllm.yaml)."""
    ctx = click.get_current_context(silent=True)
    options = ctx.find_object(CliOptions) if ctx is not None else None
    return options.config_path if options is not None else None


def load_cli_settings() -> Settings:
    """The settings of this invocation: loaded once from ``--config`` (else $CICDLLM_CONFIG or
    ./cicdllm.yaml) and kept on the root context for every later call. Raises :class:`ConfigError`."""
    ctx = click.get_current_context(silent=True)
    meta = ctx.find_root().meta if ctx is not None else None
    if meta is not None and _SETTINGS_KEY in meta:
        cached: Settings = meta[_SETTINGS_KEY]
        return cached
    settings = load_settings(cli_config_path())
    if meta is not None:
        meta[_SETTINGS_KEY] = settings
    return settings


def child_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process: ``base`` (os.environ) with $CICDLLM_CONFIG naming the
    chosen config file, so the child reads the same one (this process's environment is untouched)."""
    env = dict(os.environ if base is None else base)
    if settings.path is not None:
        env[CONFIG_ENV] = str(settings.path)
    return env


def fail_usage(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with :data:`EXIT_USAGE` (bad input)."""
    click.echo(f"error: {message}", err=True)
    raise SystemExit(EXIT_USAGE)


def load_settings_or_exit() -> Settings:
    """:func:`load_cli_settings`; an invalid config is a usage error."""
    try:
        return load_cli_settings()
    except ConfigError as exc:
        fail_usage(str(exc))


def load_definitions_or_exit(settings: Settings | None = None) -> Definitions:
    """The code location for the CLI, built from ``settings`` (default: this invocation's);
    a broken one is a usage error instead of a traceback."""
    from cicdllm_assets.runner.cli_defs import definitions_for_cli

    settings = settings or load_settings_or_exit()
    try:
        return definitions_for_cli(settings)
    except Exception as exc:  # a broken code location: say so instead of a traceback
        logger.debug("loading definitions failed", exc_info=True)
        fail_usage(f"cannot load the Dagster definitions (cicdllm_assets.definitions): {type(exc).__name__}: {exc}")
