"""`cicdllm export` (placeholder until implemented)."""

from __future__ import annotations

import click


@click.command(name="export")
def command() -> None:
    """Not implemented yet."""
    raise click.ClickException("'cicdllm export' is not implemented yet")
