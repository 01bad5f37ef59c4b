"""The one shape of an asset step: settings once, the state store opened and closed, failures
recorded one way, the Output (or MaterializeResult) and its metadata.

::

    @asset(...)
    def my_asset(context: AssetExecutionContext, app_config: AppConfigResource, ...) -> Output[pa.Table]:
        with asset_step(context, app_config, STAGE) as step:
            step.state.start_stage(step.repo, STAGE, total, "files")
            ...
            return step.output(table, metadata, data_version)

Domain code raises :class:`~cicdllm_assets.errors.CicdllmError` subclasses; the step records
each as a failure of its ``category`` and fails with a Dagster ``Failure`` (one the step retry
policy skips when the error is ``permanent``: bad config or input fails the same way again). Any
other exception is recorded as an ``internal`` failure and re-raised. Every failure also marks
the stage failed and goes to the event log, so the status viewer and ``cicdllm status`` show it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from dagster import (
    AssetExecutionContext,
    BetaWarning,
    DataVersion,
    Failure,
    MaterializeResult,
    Output,
)

from cicdllm_assets.chunking.runtime import step_chunker
from cicdllm_assets.chunking.service import Chunker
from cicdllm_assets.config import ConfigError, Settings
from cicdllm_assets.errors import INTERNAL, CicdllmError
from cicdllm_assets.repos.repos_file import redact_credentials
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.storage.state import StateStore

ALL = "*"
"""The ``repo`` of an unpartitioned step's state rows (training_dataset, adapter, evaluation)."""

T = TypeVar("T")


def permanent_failure(description: str, metadata: Mapping[str, Any] | None = None) -> Failure:
    """A :class:`~dagster.Failure` the step retry policy does not retry (``allow_retries=False``)."""
    return Failure(description=description, metadata=dict(metadata or {}), allow_retries=False)


def step_settings(app_config: AppConfigResource) -> Settings:
    """The config for one step, loaded once; an invalid config fails it at once, without retries."""
    try:
        return app_config.settings()
    except ConfigError as exc:
        raise permanent_failure(str(exc), {"category": exc.category}) from None


@dataclass
class Step:
    """One materialization of an asset: its partition, settings and open state store."""

    context: AssetExecutionContext
    stage: str
    repo: str
    settings: Settings
    state: StateStore

    def fail(
        self,
        message: str,
        *,
        category: str,
        item: str | None = None,
        permanent: bool = False,
        failed_items: int = 0,
        record: bool = True,
    ) -> Failure:
        """Record a failure of this stage (``item`` defaults to the repo) and build the Failure to raise.

        ``failed_items`` adds to the stage's failed count; ``record=False`` when the items
        were already recorded one by one (the generation ledger).
        """
        self.context.log.error(message)
        if record:
            self.state.record_failure(self.repo, self.stage, item or self.repo, category, message)
        if failed_items:
            self.state.advance(self.repo, self.stage, done=0, failed=failed_items)
        self.state.finish_stage(self.repo, self.stage, "failed")
        text = message if message.startswith(f"{self.stage}: ") else f"{self.stage}: {message}"
        self.state.log_event("error", text, repo=self.event_repo)
        metadata = {"repo": self.repo, "category": category}
        if permanent:
            return permanent_failure(message, metadata)
        return Failure(description=message, metadata=metadata)

    @property
    def event_repo(self) -> str | None:
        """The ``repo`` of this step's event-log lines (None for an unpartitioned step)."""
        return None if self.repo == ALL else self.repo

    def chunker(self) -> Chunker:
        """A chunker with the configured tokenizer, ``processing.chunk_max_tokens`` budget and plan
        cache (see :func:`~cicdllm_assets.chunking.runtime.step_chunker`); close it after use."""
        config = self.settings.config
        return step_chunker(
            self.settings.model_paths,
            self.settings.state_target,
            chunk_max_tokens=config.processing.chunk_max_tokens,
            cache_size=config.performance.cache_size,
        )

    def output(self, value: T, metadata: Mapping[str, Any], data_version: str | None = None) -> Output[T]:
        """The asset's Output with its metadata and (when given) its data version."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BetaWarning)  # Output(data_version=...) is beta since 1.x
            return Output(
                value,
                metadata=dict(metadata),
                data_version=DataVersion(data_version) if data_version is not None else None,
            )

    def result(self, metadata: Mapping[str, Any], data_version: str) -> MaterializeResult:
        """The MaterializeResult of an asset that writes its own files (adapter, evaluation)."""
        return MaterializeResult(metadata=dict(metadata), data_version=DataVersion(data_version))


@contextmanager
def asset_step(
    context: AssetExecutionContext, app_config: AppConfigResource, stage: str, *, partitioned: bool = True
) -> Iterator[Step]:
    """Run one asset step: settings loaded once, the state store open for the body and closed
    after it, every error recorded as a failure of ``stage`` (see the module docstring)."""
    repo = context.partition_key if partitioned else ALL
    try:
        settings = app_config.settings()
    except ConfigError as exc:
        context.log.error(str(exc))
        raise permanent_failure(str(exc), {"repo": repo, "category": exc.category}) from None
    with StateStore(settings.state_target) as state:
        step = Step(context, stage, repo, settings, state)
        try:
            yield step
        except Failure:
            raise
        except CicdllmError as exc:
            raise step.fail(str(exc), category=exc.category, permanent=exc.permanent) from None
        except Exception as exc:
            step.fail(f"{type(exc).__name__}: {redact_credentials(str(exc))}", category=INTERNAL)
            raise
