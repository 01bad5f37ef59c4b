"""The status read model: one snapshot of a project (repos, stages, failures, runs, resources).

Built by :func:`cicdllm_assets.status.collect.collect_status` from the readers in
:mod:`.readers` and :mod:`.runs`; shown by ``cicdllm status`` and the viewer (cli/, tui/).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from cicdllm_assets.finetune.history import HistoryRow
from cicdllm_assets.performance.battery import BatteryStatus
from cicdllm_assets.storage.contract import TABLES
from cicdllm_assets.storage.llm_load import LLMLoad

#: Stage order in the pipeline (unknown stages sort after these, by name).
_TABLE_ORDER = tuple(TABLES)
_JUDGE_AT = _TABLE_ORDER.index("qa_pairs") + 1
#: ``judge`` is the opt-in judge inside qa_pairs (quality.judge).
STAGE_ORDER = (*_TABLE_ORDER[:_JUDGE_AT], "judge", *_TABLE_ORDER[_JUDGE_AT:], "adapter", "evaluation")


def stage_key(stage: str) -> tuple[int, str]:
    """Sort key of a stage: pipeline order, then name."""
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


@dataclass
class StageStatus:
    """Progress of one stage, for one repo or summed over all repos."""

    stage: str
    repo: str | None
    done: int
    total: int
    failed: int
    unit: str
    status: str
    started_at: float | None
    updated_at: float | None
    rate_per_minute: float | None = None
    eta_seconds: float | None = None
    repos: int = 1
    stalled: bool = False

    @property
    def processed(self) -> int:
        """Items handled so far, successfully or not."""
        return self.done + self.failed

    @property
    def fraction(self) -> float:
        """processed / total in [0, 1] (1 when the total is 0 and the stage is finished)."""
        if self.total <= 0:
            return 1.0 if self.status != "running" else 0.0
        return max(0.0, min(1.0, self.processed / self.total))


@dataclass
class RunInfo:
    """One Dagster run."""

    run_id: str
    job_name: str
    status: str
    partition: str | None
    created_at: float | None
    start_time: float | None
    end_time: float | None

    @property
    def duration_seconds(self) -> float | None:
        """Wall time so far (or in total, once finished)."""
        if self.start_time is None:
            return None
        return (self.end_time or time.time()) - self.start_time


@dataclass
class FailureInfo:
    """One failed item (already free of secrets)."""

    repo: str
    stage: str
    item: str
    category: str
    message: str
    created_at: float


@dataclass
class EventInfo:
    """One line of the event log."""

    ts: float
    repo: str | None
    level: str
    message: str


@dataclass
class RepoStatus:
    """Everything known about one repo partition."""

    repo: str
    head_commit: str | None = None
    license: str | None = None
    size_bytes: int | None = None
    files_kept: int = 0
    files_skipped: int = 0
    kept_bytes: int = 0
    chunks: int = 0
    chunk_tokens: int = 0
    questions: int = 0
    answers: int = 0
    completion_tokens: int = 0
    qa_pairs: int = 0
    qa_accepted: int = 0
    failures: int = 0
    failures_by_category: dict[str, int] = field(default_factory=dict)
    last_run: RunInfo | None = None
    stages: list[StageStatus] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class ResourceInfo:
    """Machine resources."""

    cpu_percent: float
    cpu_count: int
    memory_percent: float
    memory_used: int
    memory_total: int
    battery: BatteryStatus


@dataclass
class Status:
    """The whole status snapshot."""

    generated_at: float
    config_path: str | None
    data_dir: str
    dagster_home: str
    repos: list[RepoStatus]
    stages: list[StageStatus]
    failures: list[FailureInfo]
    failure_categories: dict[str, int]
    events: list[EventInfo]
    runs: list[RunInfo]
    resources: ResourceInfo
    tokens_per_second: float | None = None
    errors: list[str] = field(default_factory=list)
    run_failures: list[FailureInfo] = field(default_factory=list)
    evaluations: list[HistoryRow] = field(default_factory=list)
    """The most recent recorded fine-tuning evaluations (at most ``EVALUATIONS_SHOWN``), oldest first."""
    llm_load: list[LLMLoad] = field(default_factory=list)
    """The model server's concurrency limit and latency per running generation stage."""

    def totals(self) -> dict[str, int]:
        """Sums of the per-repo counters."""
        keys = ("files_kept", "files_skipped", "chunks", "questions", "answers", "qa_pairs", "qa_accepted", "failures")
        return {key: sum(int(getattr(repo, key)) for repo in self.repos) for key in keys}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (the schema of ``cicdllm status --once --json``)."""
        resources = asdict(self.resources)
        resources["battery"] = self.resources.battery.to_dict()

        def stage_dict(stage: StageStatus) -> dict[str, Any]:
            data = asdict(stage)
            data["fraction"] = round(stage.fraction, 4)
            return data

        def run_dict(run: RunInfo | None) -> dict[str, Any] | None:
            if run is None:
                return None
            data = asdict(run)
            data["duration_seconds"] = run.duration_seconds
            return data

        repos = []
        for repo in self.repos:
            data = asdict(repo)
            data["last_run"] = run_dict(repo.last_run)
            data["stages"] = [stage_dict(stage) for stage in repo.stages]
            repos.append(data)
        return {
            "generated_at": self.generated_at,
            "config_path": self.config_path,
            "data_dir": self.data_dir,
            "dagster_home": self.dagster_home,
            "totals": self.totals(),
            "repos": repos,
            "stages": [stage_dict(stage) for stage in self.stages],
            "failure_categories": self.failure_categories,
            "failures": [asdict(item) for item in self.failures],
            "events": [asdict(item) for item in self.events],
            "runs": [run_dict(run) for run in self.runs],
            "run_failures": [asdict(item) for item in self.run_failures],
            "resources": resources,
            "tokens_per_second": self.tokens_per_second,
            "llm_load": [asdict(load) for load in self.llm_load],
            "errors": self.errors,
            "evaluations": [row.to_dict() for row in self.evaluations],
        }
