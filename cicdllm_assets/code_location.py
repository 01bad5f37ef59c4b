"""How the Dagster code location is built: every asset, check, job, sensor and schedule of
cicdllm, from settings the caller loaded (importing this module reads no config).

Definitions are collected by type from the ``assets`` and ``automation`` packages,
so adding a module there is enough to register what it defines. The code location module
:mod:`cicdllm_assets.definitions` builds them once for the current config; the CLI builds
them from its ``--config`` (:mod:`cicdllm_assets.runner.cli_defs`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from dagster import (
    AssetChecksDefinition,
    AssetsDefinition,
    Definitions,
    JobDefinition,
    ScheduleDefinition,
    SensorDefinition,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from cicdllm_assets import assets as assets_package
from cicdllm_assets import automation as automation_package
from cicdllm_assets.assets._conventions import with_prompt_versions
from cicdllm_assets.automation.conditions import apply_automation_conditions
from cicdllm_assets.automation.executors import executor_for
from cicdllm_assets.automation.repos_sensor import build_repos_sync_sensor
from cicdllm_assets.automation.schedules import build_refresh_schedule
from cicdllm_assets.config import Settings
from cicdllm_assets.resources import build_resources, settings_or_defaults


def _modules(package: ModuleType) -> list[ModuleType]:
    return [
        importlib.import_module(f"{package.__name__}.{info.name}")
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name)
        if not info.name.startswith("_")
    ]


def _collect(packages: list[ModuleType]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {"assets": [], "checks": [], "jobs": [], "sensors": [], "schedules": []}
    seen: set[int] = set()
    for package in packages:
        for module in _modules(package):
            for value in vars(module).values():
                if id(value) in seen:
                    continue
                seen.add(id(value))
                if isinstance(value, AssetChecksDefinition):
                    found["checks"].append(value)
                elif isinstance(value, AssetsDefinition):
                    found["assets"].append(value)
                elif isinstance(value, (JobDefinition, UnresolvedAssetJobDefinition)):
                    found["jobs"].append(value)
                elif isinstance(value, SensorDefinition):
                    found["sensors"].append(value)
                elif isinstance(value, ScheduleDefinition):
                    found["schedules"].append(value)
    return found


def build_definitions(
    resource_overrides: Mapping[str, Any] | None = None, settings: Settings | None = None
) -> Definitions:
    """Assemble the code location from ``settings`` (the current config, loaded now, when
    None): resources reading that config file, the executor every job runs on, refresh schedule
    and repos sensor, then ``resource_overrides`` (the CLI swaps in an LLM resource that outlives
    one run).

    Pipeline assets without an automation condition get the one from
    :mod:`cicdllm_assets.automation.conditions`. The executor is ``orchestration.executor``
    (:mod:`cicdllm_assets.automation.executors`); the default, in-process, fits a linear chain
    per repo, with parallelism from one run per repo partition.
    """
    settings = settings or settings_or_defaults()
    found = _collect([assets_package, automation_package])
    repos = settings.config.repos
    return Definitions(
        assets=[with_prompt_versions(apply_automation_conditions(a), settings) for a in found["assets"]],
        asset_checks=found["checks"],
        jobs=found["jobs"],
        sensors=[*found["sensors"], build_repos_sync_sensor(repos.sensor_interval_seconds)],
        schedules=[*found["schedules"], build_refresh_schedule(repos.refresh_cron)],
        resources={**build_resources(settings), **(resource_overrides or {})},
        executor=executor_for(settings),
    )
