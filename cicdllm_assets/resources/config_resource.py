"""Dagster resource that hands assets the validated config, re-read on every use (hot reload)."""

from __future__ import annotations

from dagster import ConfigurableResource

from cicdllm_assets.config import ConfigError, Settings, load_settings
from cicdllm_assets.failures import permanent_failure
from cicdllm_assets.storage.state import StateStore
from cicdllm_assets.storage.tables import TableStore


class AppConfigResource(ConfigurableResource):
    """cicdllm.yaml for assets; ``config_path`` empty means $CICDLLM_CONFIG or ./cicdllm.yaml."""

    config_path: str = ""

    def settings(self) -> Settings:
        """Load and validate the config now, so edits apply to the next materialization."""
        return load_settings(self.config_path or None)

    def step_settings(self) -> Settings:
        """:meth:`settings` for a step: an invalid config fails it at once, without step retries."""
        try:
            return self.settings()
        except ConfigError as exc:
            raise permanent_failure(str(exc)) from None

    def tables(self) -> TableStore:
        """The asset table store under the configured data dir."""
        return TableStore(self.settings().tables_dir)

    def state(self) -> StateStore:
        """The live-state SQLite store under the configured data dir."""
        return StateStore(self.settings().state_target)
