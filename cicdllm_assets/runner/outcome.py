"""What a ``cicdllm run`` did: one outcome per repo, one for the dataset step."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["done", "incomplete", "unchanged", "failed", "not_run"]
STATUSES: tuple[Status, ...] = ("done", "incomplete", "unchanged", "failed", "not_run")


@dataclass
class StepOutcome:
    """One Dagster run: a repo partition of ``main_job`` or the ``dataset_job`` step.

    ``unchanged`` means the head commit did not move and no asset gained or lost rows
    (nothing new was produced); ``incomplete`` that the run succeeded but ``missing_items``
    generation items still have no result (failed this run, or out of attempts);
    ``not_run`` that the run never started (interrupted, or nothing to do).
    """

    name: str
    status: Status
    run_id: str | None = None
    reason: str | None = None
    head_commit: str | None = None
    previous_head_commit: str | None = None
    rows: dict[str, int] = field(default_factory=dict)
    previous_rows: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    item_failures: int = 0
    missing_items: int = 0
    duration_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return asdict(self)


@dataclass
class RunSummary:
    """Every outcome of one ``cicdllm run``."""

    selection: list[str]
    repos: list[StepOutcome] = field(default_factory=list)
    dataset: StepOutcome | None = None
    interrupted: bool = False

    @property
    def failed(self) -> list[StepOutcome]:
        """The repos (and dataset step) that failed."""
        steps = [*self.repos, *([self.dataset] if self.dataset else [])]
        return [step for step in steps if step.status == "failed"]

    @property
    def ok(self) -> bool:
        """True when nothing failed and the run was not interrupted."""
        return not self.failed and not self.interrupted

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "ok": self.ok,
            "interrupted": self.interrupted,
            "selection": self.selection,
            "repos": [repo.to_dict() for repo in self.repos],
            "dataset": self.dataset.to_dict() if self.dataset else None,
            "counts": {status: sum(1 for repo in self.repos if repo.status == status) for status in STATUSES},
        }
