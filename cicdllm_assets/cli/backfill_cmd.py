"""`cicdllm backfill` (placeholder until implemented)."""

from __future__ import annotations

import click


@click.command(name="backfill")
def command() -> None:
    """Not implemented yet."""
    raise click.ClickException("'cicdllm backfill' is not implemented yet")
