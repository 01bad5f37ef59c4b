"""Dagster resource that hands assets the validated config, re-read on every use (hot reload)."""

from __future__ import annotations

from dagster import ConfigurableResource

from cicdllm_assets.config import Settings, load_settings


class AppConfigResource(ConfigurableResource):
    """cicdllm.yaml for assets; ``config_path`` empty means $CICDLLM_CONFIG or ./cicdllm.yaml."""

    config_path: str = ""

    def settings(self) -> Settings:
        """Load and validate the config now, so edits apply to the next materialization (an asset
        step calls this once, through :func:`cicdllm_assets.assets._step.asset_step`)."""
        return load_settings(self.config_path or None)
