"""LLM resources: one interface (base.LLMBackend), two Dagster resources chosen by llm.backend."""

from __future__ import annotations

from dagster import ConfigurableResource

from cicdllm_assets.config import Settings


def build_llm_resource(settings: Settings) -> ConfigurableResource:
    """The resource for ``llm.backend``: MLXResource (in process) or OpenAIResource (HTTP),
    reading ``settings``' config file."""
    config_path = str(settings.path) if settings.path is not None else ""
    if settings.config.llm.backend == "openai":
        from cicdllm_assets.resources.llm.openai_resource import OpenAIResource

        return OpenAIResource(config_path=config_path)
    from cicdllm_assets.resources.llm.mlx_resource import MLXResource

    return MLXResource(config_path=config_path)
