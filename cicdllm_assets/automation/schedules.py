"""The refresh schedule: fetch every repository on ``repos.refresh_cron`` (daily by default).

Each tick requests one ``refresh_job`` run (the ``repositories`` asset alone) per repo
partition, keyed by partition and day so a tick is never launched twice. Downstream
assets then follow through declarative automation only for the repos whose head commit
changed (see :mod:`cicdllm_assets.automation.conditions`).
"""

from __future__ import annotations

import logging
from datetime import datetime

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from cicdllm_assets.automation.jobs import refresh_job
from cicdllm_assets.partitions import REPOS_PARTITIONS_NAME

logger = logging.getLogger(__name__)

REFRESH_SCHEDULE_NAME = "refresh_repos_schedule"


def refresh_run_key(partition_key: str, when: datetime) -> str:
    """Idempotency key of one repo's refresh on one day."""
    return f"refresh:{partition_key}:{when.strftime('%Y-%m-%d')}"


def build_refresh_schedule(cron: str, name: str = REFRESH_SCHEDULE_NAME) -> ScheduleDefinition:
    """The schedule requesting a ``refresh_job`` run for every repo partition on ``cron``."""

    @schedule(
        name=name,
        cron_schedule=cron,
        job=refresh_job,
        default_status=DefaultScheduleStatus.RUNNING,
        description=(f"Fetch every repository ({cron}); downstream assets follow for repos whose head commit changed."),
    )
    def _refresh(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
        partitions = sorted(context.instance.get_dynamic_partitions(REPOS_PARTITIONS_NAME))
        if not partitions:
            return SkipReason("no repo partitions yet: add repositories to repos.txt")
        when = context.scheduled_execution_time or datetime.now()
        return [
            RunRequest(
                run_key=refresh_run_key(key, when),
                partition_key=key,
                tags={"cicdllm/trigger": "refresh_schedule"},
            )
            for key in partitions
        ]

    return _refresh
