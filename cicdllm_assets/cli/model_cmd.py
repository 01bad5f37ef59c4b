"""`cicdllm model` (placeholder until implemented)."""

from __future__ import annotations

import click


@click.command(name="model")
def command() -> None:
    """Not implemented yet."""
    raise click.ClickException("'cicdllm model' is not implemented yet")
