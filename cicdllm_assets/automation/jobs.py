"""Asset jobs of the pipeline.

The chain from ``repositories`` to ``qa_pairs`` is partitioned by repository, while
``training_dataset`` is unpartitioned (it reads every repo's ``qa_pairs``), so the
pipeline is two jobs:

- ``main_job``: the partitioned chain, one run per repo partition (backfills, ``cicdllm run``).
- ``dataset_job``: ``training_dataset`` and its checks, once after the repos are done.
- ``refresh_job``: ``repositories`` alone (clone/fetch, head commit); the daily schedule
  runs it per repo and declarative automation carries changed heads downstream.

Selections are Dagster selection strings, which tolerate keys that are not defined
(yet), so the jobs resolve whichever pipeline assets the code location holds.

Every job runs on the executor ``orchestration.executor`` names (see
:mod:`cicdllm_assets.automation.executors`; the code location sets it as the default executor of
:class:`~dagster.Definitions`, so importing this module reads no config) and retries a failed step twice with
exponential backoff and jitter: transient failures (a flaky fetch, an LLM server restart)
heal, and a retried generation step is cheap because every finished item is already
committed to the ledger. Errors a retry cannot fix (bad config, repos.txt, a missing source) are raised as
:func:`cicdllm_assets.assets._step.permanent_failure` and skip the policy.
"""

from __future__ import annotations

from dagster import (
    AssetSelection,
    Backoff,
    Jitter,
    PartitionsDefinition,
    RetryPolicy,
    define_asset_job,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

PIPELINE_GROUPS: tuple[str, ...] = ("ingest", "generation", "dataset")
PARTITIONED_ASSETS: tuple[str, ...] = (
    "repositories",
    "source_files",
    "code_chunks",
    "questions",
    "answers",
    "qa_pairs",
)
INGEST_ASSETS: tuple[str, ...] = ("repositories", "source_files", "code_chunks")
DATASET_ASSETS: tuple[str, ...] = ("training_dataset",)
ALL_PIPELINE_ASSETS: tuple[str, ...] = PARTITIONED_ASSETS + DATASET_ASSETS

STEP_RETRY_POLICY = RetryPolicy(
    max_retries=2,
    delay=2.0,
    backoff=Backoff.EXPONENTIAL,
    jitter=Jitter.PLUS_MINUS,
)
"""Two retries, ~2 s then ~4 s apart (plus/minus jitter), for transient step failures."""


def keys_selection(keys: tuple[str, ...]) -> str:
    """A selection string for the given asset keys (undefined keys select nothing)."""
    return " or ".join(f"key:{key}" for key in keys)


PIPELINE_SELECTION = keys_selection(ALL_PIPELINE_ASSETS)
MAIN_SELECTION = keys_selection(PARTITIONED_ASSETS)
DATASET_SELECTION = keys_selection(DATASET_ASSETS)
REFRESH_SELECTION = "key:repositories"


def pipeline_job(
    name: str,
    selection: str | AssetSelection,
    description: str,
    tag: str,
    partitions_def: PartitionsDefinition | None = None,
) -> UnresolvedAssetJobDefinition:
    """An asset job of the pipeline: :data:`STEP_RETRY_POLICY`, ``cicdllm/job`` tag, and the executor
    of the Definitions it is part of (``orchestration.executor``, set by ``build_definitions``)."""
    return define_asset_job(
        name,
        selection=selection,
        description=description,
        partitions_def=partitions_def,
        op_retry_policy=STEP_RETRY_POLICY,
        tags={"cicdllm/job": tag},
    )


main_job = pipeline_job(
    "main_job",
    MAIN_SELECTION,
    "The per-repository chain repositories -> source_files -> code_chunks -> questions -> answers"
    " -> qa_pairs, one run per repo partition. Run dataset_job afterwards to export.",
    "main",
)

dataset_job = pipeline_job(
    "dataset_job",
    DATASET_SELECTION,
    "training_dataset (dedup, split, export) over every repo's qa_pairs, with its checks.",
    "dataset",
)

refresh_job = pipeline_job(
    "refresh_job",
    REFRESH_SELECTION,
    "Fetch each repository and record its head commit (run by the refresh schedule).",
    "refresh",
)
