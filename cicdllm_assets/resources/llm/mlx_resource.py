"""Dagster resource for the in-process mlx-lm backend."""

from __future__ import annotations

import threading
from pathlib import Path

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from cicdllm_assets.config import Settings, load_settings
from cicdllm_assets.models.paths import EMBEDDED_ALIAS, ModelNotPreparedError, resolve_model
from cicdllm_assets.resources.llm.mlx_backend import MLXBackend, release_models
from cicdllm_assets.resources.llm.openblas import ensure_openblas


def backend_from_settings(settings: Settings) -> MLXBackend:
    """An :class:`MLXBackend` for ``llm.model`` with the configured batch size and limits."""
    llm = settings.config.llm
    ensure_openblas(enabled=llm.mlx.use_openblas)
    model = resolve_model(settings)
    if llm.model == EMBEDDED_ALIAS and not (Path(model) / "config.json").is_file():
        raise ModelNotPreparedError(
            f"the embedded model is not prepared at {model}: run `cicdllm model prepare` (or `make model`)"
        )
    return MLXBackend(
        model,
        batch_size=settings.config.generation.batch_size,
        context_window=llm.context_window,
        max_kv_size=llm.mlx.max_kv_size,
        dequantize=llm.mlx.dequantize_on_cpu,
    )


class MLXResource(ConfigurableResource):
    """mlx-lm in process; ``config_path`` empty means $CICDLLM_CONFIG or ./cicdllm.yaml.

    ``get_backend()`` builds the backend on first use; the model itself is loaded
    lazily on the first token count or generation, once per process (cached by path),
    and released when the step's resources are torn down (or by :meth:`close`).
    """

    config_path: str = ""

    _backend: MLXBackend | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def get_backend(self) -> MLXBackend:
        """The backend for ``llm.model`` (settings read via ``load_settings``)."""
        with self._lock:
            if self._backend is None:
                self._backend = backend_from_settings(load_settings(self.config_path or None))
            return self._backend

    def close(self) -> None:
        """Release the backend and the process's loaded models."""
        with self._lock:
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
            release_models(backend.model_path)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        """Dagster hook: free the model at the end of the step."""
        self.close()
