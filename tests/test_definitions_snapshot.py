"""Snapshot of the code location: assets, groups, lineage, partitions, checks, automation,
jobs, schedules and sensors, compared with ``tests/snapshots/definitions.txt``.

A change to the graph shows up as a readable diff in review. After an intended change,
regenerate the file with ``UPDATE_SNAPSHOTS=1 pytest tests/test_definitions_snapshot.py``.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

import dagster as dg

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.txt"
UPDATE_ENV = "UPDATE_SNAPSHOTS"


def _partitions(partitions_def: dg.PartitionsDefinition | None) -> str:
    if partitions_def is None:
        return "none"
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        return f"dynamic:{partitions_def.name}"
    return type(partitions_def).__name__


def _keys(keys: object) -> str:
    names = sorted(k.to_user_string() for k in keys)  # type: ignore[attr-defined]
    return "[" + ", ".join(names) + "]"


def _code_version(version: str | None) -> str:
    """The code version with its source/prompt digests masked (they move with every edit)."""
    return re.sub(r"-([sp])[0-9a-f]{12}\b", r"-\1<sha>", version) if version else "none"


def _columns(metadata: object) -> str:
    schema = metadata.get("dagster/column_schema") if isinstance(metadata, dict) else None
    if schema is None:
        return "none"
    return ",".join(f"{c.name}:{c.type}" for c in schema.columns)


def render_definitions(defs: dg.Definitions) -> str:
    """A stable, line-oriented description of everything the code location defines."""
    graph = defs.resolve_asset_graph()
    lines: list[str] = ["# cicdllm code location (regenerate: UPDATE_SNAPSHOTS=1)", "", "## assets"]
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        if not node.is_materializable:
            lines.append(f"external {key.to_user_string()}")
            continue
        condition = node.automation_condition
        lines.append(
            f"asset {key.to_user_string()}: group={node.group_name}"
            f" partitions={_partitions(node.partitions_def)}"
            f" deps={_keys(node.parent_keys)}"
            f" automation={condition.get_label() if condition else 'none'}"
            f" kinds={sorted(node.kinds)}"
            f" owners={sorted(node.owners)}"
            f" code_version={_code_version(node.code_version)}"
        )
        lines.append(f"  columns {key.to_user_string()}: {_columns(dict(node.metadata))}")
    lines += ["", "## checks"]
    for check_key in sorted(graph.asset_check_keys, key=lambda c: (c.asset_key.to_user_string(), c.name)):
        lines.append(f"check {check_key.asset_key.to_user_string()}:{check_key.name}")
    lines += ["", "## jobs"]
    for job in sorted(defs.resolve_all_job_defs(), key=lambda j: j.name):
        if job.name.startswith("__"):
            continue
        retry = job.op_retry_policy
        lines.append(
            f"job {job.name}: assets={_keys(job.asset_layer.executable_asset_keys)}"
            f" partitions={_partitions(job.partitions_def)}"
            f" executor={job.executor_def.name}"
            f" retries={retry.max_retries if retry else 0}"
        )
    lines += ["", "## schedules"]
    for schedule in sorted(defs.schedules or [], key=lambda s: s.name):
        assert isinstance(schedule, dg.ScheduleDefinition)
        lines.append(
            f"schedule {schedule.name}: cron={schedule.cron_schedule} job={schedule.job_name}"
            f" default={schedule.default_status.value}"
        )
    lines += ["", "## sensors"]
    for sensor in sorted(defs.sensors or [], key=lambda s: s.name):
        assert isinstance(sensor, dg.SensorDefinition)
        target = ""
        if sensor.has_jobs:
            target = " jobs=[" + ", ".join(sorted(j.name for j in sensor.jobs)) + "]"
        status = sensor.default_status.value
        lines.append(f"sensor {sensor.name}: type={sensor.sensor_type.value}{target} default={status}")
    return "\n".join(lines) + "\n"


def test_definitions_match_the_snapshot() -> None:
    from cicdllm_assets.definitions import defs

    actual = render_definitions(defs)
    if os.environ.get(UPDATE_ENV) == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(actual, encoding="utf-8")
    assert SNAPSHOT.exists(), f"{SNAPSHOT} is missing: write it with {UPDATE_ENV}=1 and review it"
    expected = SNAPSHOT.read_text(encoding="utf-8")
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True), actual.splitlines(keepends=True), "snapshot", "definitions"
        )
    )
    assert not diff, f"definitions changed (regenerate with {UPDATE_ENV}=1 if intended):\n{diff}"


def test_definitions_validate_as_a_code_location() -> None:
    from cicdllm_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    assert {"main_job", "dataset_job", "refresh_job"} <= {j.name for j in defs.resolve_all_job_defs()}
