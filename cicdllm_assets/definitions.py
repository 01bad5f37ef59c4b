"""The Dagster code location of cicdllm (``dagster dev -m cicdllm_assets.definitions``).

The config ($CICDLLM_CONFIG or ./cicdllm.yaml) is loaded once, here, per process that loads
the code location; everything in it (resources, executor, schedule, sensor) gets its values
from that one :class:`~cicdllm_assets.config.Settings`.
"""

from __future__ import annotations

from cicdllm_assets.code_location import build_definitions
from cicdllm_assets.resources import settings_or_defaults

__all__ = ["build_definitions", "defs"]

defs = build_definitions(settings=settings_or_defaults())
