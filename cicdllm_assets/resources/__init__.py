"""Dagster resources, chosen from the environment's cicdllm.yaml."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cicdllm_assets.config import AppConfig, ConfigError, Settings, load_settings
from cicdllm_assets.io_managers import PartitionedParquetIOManager
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.resources.llm import build_llm_resource

logger = logging.getLogger(__name__)


def settings_or_defaults() -> Settings:
    """The config the code location is built from; the defaults when it is invalid (the
    definitions must still load so `dagster dev` shows the graph; every asset re-validates
    the config and fails with the full message)."""
    try:
        return load_settings()
    except ConfigError as exc:
        logger.warning("config invalid, the code location uses the defaults: %s", exc)
        return Settings(config=AppConfig(), path=None, root=Path.cwd())


def build_resources(settings: Settings | None = None) -> dict[str, Any]:
    """Resources for Definitions: config, Parquet IO manager and the configured LLM backend,
    each reading ``settings``' config file (none: $CICDLLM_CONFIG or ./cicdllm.yaml at use)."""
    settings = settings or settings_or_defaults()
    config_path = str(settings.path) if settings.path is not None else ""
    return {
        "app_config": AppConfigResource(config_path=config_path),
        "io_manager": PartitionedParquetIOManager(config_path=config_path),
        "llm": build_llm_resource(settings),
    }
