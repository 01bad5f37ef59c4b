"""LLM resources: one interface (base.LLMBackend), two Dagster resources chosen by llm.backend."""

from __future__ import annotations

from dagster import ConfigurableResource

from cicdllm_assets.config import Settings


def build_llm_resource(settings: Settings) -> ConfigurableResource:
    """The resource for ``llm.backend``: MLXResource (in process) or OpenAIResource (HTTP)."""
    if settings.config.llm.backend == "openai":
        from cicdllm_assets.resources.llm.openai_resource import OpenAIResource

        return OpenAIResource()
    from cicdllm_assets.resources.llm.mlx_resource import MLXResource

    return MLXResource()
