"""Dagster resources, chosen from the environment's cicdllm.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cicdllm_assets.config import AppConfig, ConfigError, Settings, load_settings
from cicdllm_assets.io_managers import PartitionedParquetIOManager
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.resources.llm import build_llm_resource


def build_resources(settings: Settings | None = None) -> dict[str, Any]:
    """Resources for Definitions: config, Parquet IO manager and the configured LLM backend."""
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError:
            # Definitions must still load so `dagster dev` shows the graph; every
            # asset re-validates the config and fails with the full message.
            settings = Settings(config=AppConfig(), path=None, root=Path.cwd())
    return {
        "app_config": AppConfigResource(),
        "io_manager": PartitionedParquetIOManager(),
        "llm": build_llm_resource(settings),
    }
