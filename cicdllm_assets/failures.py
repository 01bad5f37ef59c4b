"""Step failures that a retry cannot fix.

Every job carries a step :class:`~dagster.RetryPolicy` (see :mod:`cicdllm_assets.automation.jobs`)
so transient failures (a flaky fetch, an LLM server restart) heal by themselves. Errors in the
configuration, ``repos.txt`` or the prepared model files would fail again the same way, so they
are raised as permanent failures: Dagster skips the retry policy for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import Failure


def permanent_failure(description: str, metadata: Mapping[str, Any] | None = None) -> Failure:
    """A :class:`~dagster.Failure` the step retry policy does not retry (``allow_retries=False``)."""
    return Failure(description=description, metadata=dict(metadata or {}), allow_retries=False)
