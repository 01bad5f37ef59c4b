"""`cicdllm run` (placeholder until implemented)."""

from __future__ import annotations

import click


@click.command(name="run")
def command() -> None:
    """Not implemented yet."""
    raise click.ClickException("'cicdllm run' is not implemented yet")
