"""In-process mlx-lm backend (placeholder: implemented by the generation work)."""

from __future__ import annotations

from dagster import ConfigurableResource


class MLXResource(ConfigurableResource):
    """mlx-lm in process; ``config_path`` empty means $CICDLLM_CONFIG or ./cicdllm.yaml."""

    config_path: str = ""
