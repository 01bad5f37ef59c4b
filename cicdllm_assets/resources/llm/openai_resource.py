"""Dagster resource for any OpenAI-compatible server (vLLM, llama.cpp, Ollama, mlx_lm.server...)."""

from __future__ import annotations

from typing import cast

from cicdllm_assets.config import Settings
from cicdllm_assets.llm.openai_backend import OpenAIBackend
from cicdllm_assets.resources.llm.backend_resource import BackendResource


class OpenAIResource(BackendResource):
    """Any OpenAI-compatible server; ``config_path`` empty means $CICDLLM_CONFIG or ./cicdllm.yaml.

    ``get_backend()`` builds one :class:`OpenAIBackend` from ``llm.openai`` on first use
    and returns the same one afterwards; its HTTP client and event-loop thread are
    closed when the step's resources are torn down (or by :meth:`close`).
    """

    def get_backend(self, settings: Settings | None = None) -> OpenAIBackend:
        """The backend for the configured server (``settings``: the step's; None reads the config now)."""
        return cast(OpenAIBackend, self._cached_backend(settings))

    def _build(self, settings: Settings) -> OpenAIBackend:
        return OpenAIBackend.from_model_paths(settings.model_paths)
