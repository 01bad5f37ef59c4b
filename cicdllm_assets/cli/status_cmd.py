"""`cicdllm status` (placeholder until implemented)."""

from __future__ import annotations

import click


@click.command(name="status")
def command() -> None:
    """Not implemented yet."""
    raise click.ClickException("'cicdllm status' is not implemented yet")
