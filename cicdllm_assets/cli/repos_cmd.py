"""`cicdllm repos` (placeholder until implemented)."""

from __future__ import annotations

import click


@click.command(name="repos")
def command() -> None:
    """Not implemented yet."""
    raise click.ClickException("'cicdllm repos' is not implemented yet")
