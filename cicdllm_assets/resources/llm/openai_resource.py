"""OpenAI-compatible HTTP backend (placeholder: implemented by the generation work)."""

from __future__ import annotations

from dagster import ConfigurableResource


class OpenAIResource(ConfigurableResource):
    """Any OpenAI-compatible server; ``config_path`` empty means $CICDLLM_CONFIG or ./cicdllm.yaml."""

    config_path: str = ""
