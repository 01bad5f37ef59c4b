"""Where the configured model and its tokenizer live."""

from __future__ import annotations

from pathlib import Path

from cicdllm_assets.config import Settings

EMBEDDED_ALIAS = "embedded"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_DIR_NAME = "smollm2-135m-instruct"


class ModelNotPreparedError(RuntimeError):
    """The embedded model (or a tokenizer) is missing: run `cicdllm model prepare`."""


def embedded_model_dir(settings: Settings) -> Path:
    """The mlx-lm model directory `cicdllm model prepare` writes."""
    return settings.models_dir / EMBEDDED_DIR_NAME


def resolve_model(settings: Settings) -> str:
    """``llm.model`` as something mlx_lm.load accepts: a local directory or a hub id."""
    model = settings.config.llm.model
    if model == EMBEDDED_ALIAS:
        return str(embedded_model_dir(settings))
    candidate = settings.resolve(model)
    if candidate.exists() or model.startswith((".", "/", "~")):
        return str(candidate)
    return model


def _tokenizer_file(location: Path, what: str) -> Path:
    path = location / "tokenizer.json" if location.is_dir() else location
    if not path.is_file():
        raise ModelNotPreparedError(
            f"{what}: no tokenizer.json at {path}; run `cicdllm model prepare` "
            "or set processing.tokenizer to a tokenizer.json path"
        )
    return path


def resolve_tokenizer_path(settings: Settings) -> Path:
    """tokenizer.json for token counting: ``processing.tokenizer`` or the model's own."""
    value = settings.config.processing.tokenizer
    if value != "model":
        return _tokenizer_file(settings.resolve(value), "processing.tokenizer")
    if settings.config.llm.backend == "openai" and settings.config.llm.openai.tokenizer:
        return _tokenizer_file(settings.resolve(settings.config.llm.openai.tokenizer), "llm.openai.tokenizer")
    model = resolve_model(settings)
    location = Path(model)
    if not location.exists():
        raise ModelNotPreparedError(
            f"llm.model {model!r} is not a local directory; run `cicdllm model prepare` "
            "or set processing.tokenizer to a tokenizer.json path"
        )
    return _tokenizer_file(location, "llm.model")
