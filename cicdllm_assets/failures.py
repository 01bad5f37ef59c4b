"""Step failures that a retry cannot fix.

Every job carries a step :class:`~dagster.RetryPolicy` (see :mod:`cicdllm_assets.automation.jobs`)
so transient failures (a flaky fetch, an LLM server restart) heal by themselves. Errors in the
configuration, ``repos.txt`` or the prepared model files would fail again the same way, so they
are raised as permanent failures: Dagster skips the retry policy for them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dagster import Failure

from cicdllm_assets.storage.state import StateStore


def permanent_failure(description: str, metadata: Mapping[str, Any] | None = None) -> Failure:
    """A :class:`~dagster.Failure` the step retry policy does not retry (``allow_retries=False``)."""
    return Failure(description=description, metadata=dict(metadata or {}), allow_retries=False)


@contextmanager
def stage_failures_recorded(state: StateStore, repo: str, stage: str) -> Iterator[None]:
    """Run an asset step's body: an unexpected error is recorded as an ``internal`` failure of
    the stage (so the viewer shows it) and re-raised; Dagster Failures pass through as they
    are. The state store is closed either way."""
    try:
        yield
    except Failure:
        raise
    except Exception as exc:
        state.record_failure(repo, stage, repo, "internal", f"{type(exc).__name__}: {exc}")
        state.finish_stage(repo, stage, "failed")
        raise
    finally:
        state.close()
