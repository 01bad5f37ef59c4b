"""Declarative automation: downstream assets follow a repo only when its data changed.

``repositories`` outputs ``data_version = head_commit``, so a refresh that finds the
same head commit records an unchanged data version and nothing downstream runs. When a
head commit moves, ``source_files`` sees its parent's data version change and the rest
of the chain is requested in the same tick (``will_be_requested``), as one backfill that
respects dependencies (the sensor emits backfills).

Updates made by a run that already included the downstream asset (``cicdllm run``,
``main_job``) are ignored (``executed_with_root_target``), so a finished run does not
trigger itself again. New repo partitions are not automation's business: the repos.txt
sensor adds them and launches their first run of the whole chain.

The conditions are attached in :mod:`cicdllm_assets.definitions` through
:func:`apply_automation_conditions`, to the pipeline assets that declare none themselves.
"""

from __future__ import annotations

from collections.abc import Mapping

from dagster import (
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
)

from cicdllm_assets.automation.jobs import DATASET_ASSETS, PARTITIONED_ASSETS, PIPELINE_SELECTION

AUTOMATION_SENSOR_NAME = "automation_condition_sensor"


def deps_data_version_changed() -> AutomationCondition:
    """True when a parent's data version changed outside this asset's own run, or a parent
    will be requested on this tick."""
    changed_elsewhere = (
        AutomationCondition.data_version_changed() & ~AutomationCondition.executed_with_root_target()
    ).with_label("data_version_changed_outside_own_run")
    return AutomationCondition.any_deps_match(changed_elsewhere | AutomationCondition.will_be_requested()).with_label(
        "any_deps_data_version_changed"
    )


def follow_head_commit() -> AutomationCondition:
    """Condition of the partitioned chain below ``repositories``.

    Like ``AutomationCondition.eager()``, but triggered by a parent's *data version*
    changing (ultimately the repo's head commit) rather than by any materialization.
    """
    return (
        deps_data_version_changed().since_last_handled()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("follow_head_commit")


def follow_any_repo() -> AutomationCondition:
    """Condition of ``training_dataset``: rebuild after any repo's ``qa_pairs`` changed.

    An unpartitioned asset cannot share a run with a repo partition, so it follows on the
    tick after the new ``qa_pairs`` landed (and waits while any repo is still in progress).

    A repo whose ``qa_pairs`` partition is missing (new or failing) does not block the
    export of the others, so ``any_deps_missing`` is not part of it.
    """
    return (
        deps_data_version_changed().since_last_handled()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("follow_any_repo")


def pipeline_conditions() -> dict[AssetKey, AutomationCondition]:
    """The condition of each pipeline asset that automation drives (not ``repositories``,
    which the refresh schedule and the repos.txt sensor drive)."""
    conditions: dict[AssetKey, AutomationCondition] = {
        AssetKey(name): follow_head_commit() for name in PARTITIONED_ASSETS if name != "repositories"
    }
    conditions.update({AssetKey(name): follow_any_repo() for name in DATASET_ASSETS})
    return conditions


def apply_automation_conditions(
    assets_def: AssetsDefinition, conditions: Mapping[AssetKey, AutomationCondition] | None = None
) -> AssetsDefinition:
    """Attach the pipeline conditions to the specs of ``assets_def`` that have none."""
    wanted = pipeline_conditions() if conditions is None else conditions
    if not any(key in wanted for key in assets_def.keys):
        return assets_def

    def _with_condition(spec: AssetSpec) -> AssetSpec:
        if spec.automation_condition is not None or spec.key not in wanted:
            return spec
        return spec.replace_attributes(automation_condition=wanted[spec.key])

    return assets_def.map_asset_specs(_with_condition)


automation_condition_sensor = AutomationConditionSensorDefinition(
    AUTOMATION_SENSOR_NAME,
    target=PIPELINE_SELECTION,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description=(
        "Evaluates the pipeline's automation conditions: downstream assets follow a repo whose head"
        " commit changed; training_dataset follows any repo's new qa_pairs."
    ),
)
