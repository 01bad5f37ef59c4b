"""Configuration: Pydantic models for cicdllm.yaml and the loader with env overrides."""

from cicdllm_assets.config.loader import ConfigError, ConfigIssue, ModelPaths, Settings, load_settings, masked_dump
from cicdllm_assets.config.models import AppConfig

__all__ = ["AppConfig", "ConfigError", "ConfigIssue", "ModelPaths", "Settings", "load_settings", "masked_dump"]
