"""Dagster resource for any OpenAI-compatible server (vLLM, llama.cpp, Ollama, mlx_lm.server...)."""

from __future__ import annotations

import threading

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from cicdllm_assets.config import load_settings
from cicdllm_assets.resources.llm.openai_backend import OpenAIBackend


class OpenAIResource(ConfigurableResource):
    """Any OpenAI-compatible server; ``config_path`` empty means $CICDLLM_CONFIG or ./cicdllm.yaml.

    ``get_backend()`` builds one :class:`OpenAIBackend` from ``llm.openai`` on first use
    and returns the same one afterwards; its HTTP client and event-loop thread are
    closed when the step's resources are torn down (or by :meth:`close`).
    """

    config_path: str = ""

    _backend: OpenAIBackend | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def get_backend(self) -> OpenAIBackend:
        """The backend for the configured server (settings read via ``load_settings``)."""
        with self._lock:
            if self._backend is None:
                settings = load_settings(self.config_path or None)
                self._backend = OpenAIBackend.from_settings(settings)
            return self._backend

    def close(self) -> None:
        """Close the backend's connections (a later ``get_backend()`` builds a new one)."""
        with self._lock:
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        """Dagster hook: release connections at the end of the step."""
        self.close()
