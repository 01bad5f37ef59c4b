"""What the LLM resources share: one backend per resource, built on first use, closed at teardown."""

from __future__ import annotations

import threading

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from cicdllm_assets.config import Settings, load_settings
from cicdllm_assets.llm.base import LLMBackend


class BackendResource(ConfigurableResource):
    """Base of the ``llm`` resources; ``config_path`` empty means $CICDLLM_CONFIG or ./cicdllm.yaml.

    Subclasses say how to build their backend from the settings (:meth:`_build`) and,
    if closing it is not enough, how to release it (:meth:`_release`).
    """

    config_path: str = ""

    _backend: LLMBackend | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def get_backend(self, settings: Settings | None = None) -> LLMBackend:
        """The backend (``settings``: the step's; None reads the config now)."""
        return self._cached_backend(settings)

    def _build(self, settings: Settings) -> LLMBackend:
        raise NotImplementedError

    def _release(self, backend: LLMBackend) -> None:
        backend.close()

    def _cached_backend(self, settings: Settings | None) -> LLMBackend:
        """The backend, built on the first call from ``settings`` (the step's, loaded once)
        or, without them, from ``load_settings(config_path)``."""
        with self._lock:
            if self._backend is None:
                self._backend = self._build(settings or load_settings(self.config_path or None))
            return self._backend

    def close(self) -> None:
        """Release the backend (a later ``get_backend()`` builds a new one)."""
        with self._lock:
            backend, self._backend = self._backend, None
        if backend is not None:
            self._release(backend)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        """Dagster hook: release the backend at the end of the step."""
        self.close()
