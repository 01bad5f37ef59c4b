"""Sensor keeping the dynamic partitions "repos" in sync with repos.txt.

Each tick re-reads repos.txt: new entries become partitions and get one run of
``ingest_new_repo_job`` (run key ``new-repo:<key>``, so a repo is never launched twice by the
sensor); entries removed from the file lose their partition (their stored tables stay on disk).
An invalid repos.txt makes the tick skip with every bad line in the reason, changing nothing.
"""

import logging

from dagster import (
    AddDynamicPartitionsRequest,
    AssetSelection,
    DefaultSensorStatus,
    DeleteDynamicPartitionsRequest,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from cicdllm_assets.automation.jobs import pipeline_job
from cicdllm_assets.config import ConfigError
from cicdllm_assets.partitions import REPOS_PARTITIONS_NAME, repos_partitions
from cicdllm_assets.repos.repos_file import ReposFileError
from cicdllm_assets.repos.sync import load_entries, plan_sync
from cicdllm_assets.resources.config_resource import AppConfigResource

logger = logging.getLogger(__name__)

ingest_new_repo_job = pipeline_job(
    "ingest_new_repo_job",
    # Every repo-partitioned asset (repositories … qa_pairs); the unpartitioned
    # training_dataset is left to the main job / schedule.
    AssetSelection.from_string('partitions:"dynamic"'),
    "All per-repository assets for one repo partition (launched by repos_sync_sensor).",
    "ingest_new_repo",
    partitions_def=repos_partitions,
)


def new_repo_run_key(partition_key: str) -> str:
    """Run key of the first run of a newly added repo."""
    return f"new-repo:{partition_key}"


def sync_repos_tick(context: SensorEvaluationContext, app_config: AppConfigResource) -> SensorResult | SkipReason:
    """Add/delete "repos" partitions to match repos.txt; request one run per new repo."""
    try:
        settings = app_config.settings()
        entries = load_entries(settings.repos_file)
    except (ConfigError, ReposFileError) as exc:
        context.log.warning(f"repos sensor skipped: {exc}")
        return SkipReason(f"repos.txt not applied: {exc}")
    existing = context.instance.get_dynamic_partitions(REPOS_PARTITIONS_NAME)
    added, removed = plan_sync(existing, entries)
    if not added and not removed:
        return SkipReason(f"repos.txt unchanged ({len(entries)} repositories)")
    requests: list[AddDynamicPartitionsRequest | DeleteDynamicPartitionsRequest] = []
    if added:
        requests.append(repos_partitions.build_add_request(added))
    if removed:
        requests.append(repos_partitions.build_delete_request(removed))
    runs = [
        RunRequest(
            run_key=new_repo_run_key(key),
            partition_key=key,
            tags={"cicdllm/trigger": "new-repo", "cicdllm/repo": key},
        )
        for key in added
    ]
    context.log.info(f"repos.txt: added {added or 'none'}, removed {removed or 'none'}")
    return SensorResult(run_requests=runs, dynamic_partitions_requests=requests)


def build_repos_sync_sensor(interval_seconds: int) -> SensorDefinition:
    """The ``repos_sync_sensor``, ticking every ``interval_seconds`` (``repos.sensor_interval_seconds``)."""

    @sensor(
        name="repos_sync_sensor",
        job=ingest_new_repo_job,
        minimum_interval_seconds=interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Sync the 'repos' partitions with repos.txt and run new repositories.",
    )
    def repos_sync_sensor(context: SensorEvaluationContext, app_config: AppConfigResource) -> SensorResult | SkipReason:
        """Add/delete "repos" partitions to match repos.txt; request one run per new repo."""
        return sync_repos_tick(context, app_config)

    return repos_sync_sensor
