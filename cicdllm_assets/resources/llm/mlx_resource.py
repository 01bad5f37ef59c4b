"""Dagster resource for the in-process mlx-lm backend."""

from __future__ import annotations

from typing import cast

from cicdllm_assets.config import Settings
from cicdllm_assets.llm.base import LLMBackend
from cicdllm_assets.llm.mlx_backend import MLXBackend, release_models
from cicdllm_assets.llm.models.paths import check_model
from cicdllm_assets.llm.openblas import ensure_openblas
from cicdllm_assets.resources.llm.backend_resource import BackendResource


def backend_from_settings(settings: Settings) -> MLXBackend:
    """An :class:`MLXBackend` for ``llm.model`` with the configured batch size and limits."""
    llm = settings.config.llm
    ensure_openblas(enabled=llm.mlx.use_openblas)
    model = check_model(settings.model_paths)
    return MLXBackend(
        model,
        batch_size=settings.config.generation.batch_size,
        context_window=llm.context_window,
        max_kv_size=llm.mlx.max_kv_size,
        dequantize=llm.mlx.dequantize_on_cpu,
    )


class MLXResource(BackendResource):
    """mlx-lm in process; ``config_path`` empty means $CICDLLM_CONFIG or ./cicdllm.yaml.

    ``get_backend()`` builds the backend on first use; the model itself is loaded
    lazily on the first token count or generation, once per process (cached by path),
    and released when the step's resources are torn down (or by :meth:`close`).
    """

    def get_backend(self, settings: Settings | None = None) -> MLXBackend:
        """The backend for ``llm.model`` (``settings``: the step's; None reads the config now)."""
        return cast(MLXBackend, self._cached_backend(settings))

    def _build(self, settings: Settings) -> MLXBackend:
        return backend_from_settings(settings)

    def _release(self, backend: LLMBackend) -> None:
        """Close the backend and free the process's loaded models."""
        backend.close()
        release_models(cast(MLXBackend, backend).model_path)
