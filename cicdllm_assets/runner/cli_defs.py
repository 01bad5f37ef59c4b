"""The code location as ``cicdllm run`` / ``backfill`` use it: built for the current config,
with an MLX resource that keeps its model loaded from one repo run to the next."""

from __future__ import annotations

from typing import Any

from dagster import Definitions, InitResourceContext

from cicdllm_assets.config import Settings
from cicdllm_assets.resources.llm.mlx_resource import MLXResource


class KeepLoadedMLXResource(MLXResource):
    """The MLX resource without the model release at the end of each run.

    Models are cached per process by path, so every run of one ``cicdllm run`` reuses
    the model the first one loaded; the runner frees it once when all runs are done.
    """

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        """Keep the model (the runner releases it at the end)."""
        return None


def definitions_for_cli(settings: Settings | None = None) -> Definitions:
    """``build_definitions()`` for ``settings`` (the CLI's, loaded once; None: the current
    config), the MLX model kept across runs."""
    from cicdllm_assets.code_location import build_definitions
    from cicdllm_assets.resources import build_resources, settings_or_defaults

    settings = settings or settings_or_defaults()
    overrides: dict[str, Any] = {}
    llm = build_resources(settings).get("llm")
    if type(llm) is MLXResource:
        overrides["llm"] = KeepLoadedMLXResource(config_path=llm.config_path)
    return build_definitions(resource_overrides=overrides, settings=settings)
