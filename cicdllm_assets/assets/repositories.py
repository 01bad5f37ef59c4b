"""The ``repositories`` asset: clone or fetch one repos.txt entry per partition.

Its data version is the checked-out head commit, so downstream assets are stale exactly when a
repository moved. repos.txt is re-read on every materialization: a partition whose entry was
removed fails with a clear message instead of cloning something stale.
"""

import json
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from dagster import AssetExecutionContext, MetadataValue, Output

from cicdllm_assets.assets._conventions import repo_table_asset
from cicdllm_assets.assets._step import asset_step
from cicdllm_assets.errors import GIT, NOT_IN_REPOS_FILE, REPOS_FILE
from cicdllm_assets.quality.secrets import redact_field
from cicdllm_assets.repos.git_ops import GitError, sync_repo
from cicdllm_assets.repos.license import detect_license
from cicdllm_assets.repos.repos_file import (
    ReposFileError,
    find_entry,
    read_repos_file_lenient,
    redact_credentials,
)
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.storage.contract import REPOSITORIES_SCHEMA, RepositoryRow
from cicdllm_assets.storage.state import StateStore

STAGE = "repositories"


def _previous_head(state: StateStore, repo: str) -> str | None:
    rows = state.query("SELECT head_commit FROM repo_info WHERE repo = ?", (repo,))
    return rows[0]["head_commit"] if rows else None


@repo_table_asset(
    "ingest",
    "repositories-v1",
    {"git", "parquet"},
    REPOSITORIES_SCHEMA,
    "Clone or fetch the repository of this partition and check out its ref (one row).",
)
def repositories(context: AssetExecutionContext, app_config: AppConfigResource) -> Output[pa.Table]:
    """Clone/fetch the partition's repo into the cache; one row with head commit, licence, size."""
    with asset_step(context, app_config, STAGE) as step:
        repo, settings, state = step.repo, step.settings, step.state
        state.start_stage(repo, STAGE, total=1, unit="repos")
        state.clear_failures(repo, STAGE)
        try:
            entries, problems = read_repos_file_lenient(settings.repos_file)
        except ReposFileError as exc:
            raise step.fail(str(exc), category=REPOS_FILE, permanent=True, failed_items=1) from None
        entry = find_entry(entries, repo)
        if problems is not None:
            # Bad lines elsewhere in repos.txt do not stop this repository.
            context.log.warning(str(problems))
            if entry is None:
                raise step.fail(
                    f"partition {repo!r} not found; {problems}", category=REPOS_FILE, permanent=True, failed_items=1
                )
        if entry is None:
            raise step.fail(
                f"partition {repo!r} is not in {settings.repos_file} any more; "
                "run `cicdllm repos sync` (or let the repos sensor run) to drop it",
                category=NOT_IN_REPOS_FILE,
                permanent=True,
                failed_items=1,
            )
        url = redact_field(redact_credentials(entry.url)) or ""  # a token in the path or query too
        context.log.info(f"syncing {url}" + (f" @ {entry.ref}" if entry.ref else "") + f" into {settings.cache_dir}")
        previous = _previous_head(state, repo)
        try:
            checkout = sync_repo(entry, settings.cache_dir, float(settings.config.repos.clone_timeout_seconds))
        except GitError as exc:
            raise step.fail(str(exc), category=GIT, permanent=exc.permanent, failed_items=1) from None
        license_id = detect_license(checkout.path)
        head_changed = previous != checkout.head_commit
        fetched_at = datetime.now(UTC)
        row: RepositoryRow = {
            "repo": repo,
            "url": url,
            "ref": entry.ref,
            "kind": entry.kind,
            "local_path": str(checkout.path),
            "head_commit": checkout.head_commit,
            "default_branch": checkout.default_branch,
            "resolved_ref": checkout.resolved,
            "license": license_id,
            "size_bytes": checkout.size_bytes,
            "head_changed": head_changed,
            "previous_commit": previous,
            "fetched_at": fetched_at,
        }
        table = pa.Table.from_pylist([row], schema=REPOSITORIES_SCHEMA)
        info = {key: value for key, value in row.items() if key != "fetched_at"}
        info["fetched_at"] = fetched_at.isoformat()
        state.set_repo_info(repo, checkout.head_commit, json.dumps(info, sort_keys=True))
        state.advance(repo, STAGE, done=1)
        state.finish_stage(repo, STAGE, "done")
        action = "cloned" if checkout.cloned else "fetched"
        change = "head changed" if head_changed else "head unchanged"
        state.log_event("info", f"{STAGE}: {action} {url} at {checkout.head_commit[:12]} ({change})", repo=repo)
        context.log.info(
            f"{action} {url} at {checkout.head_commit[:12]} ({checkout.resolved}); licence {license_id}; {change}"
        )
        metadata: dict[str, Any] = {
            "url": MetadataValue.text(url),
            "ref": MetadataValue.text(entry.ref or "(default branch)"),
            "resolved_ref": MetadataValue.text(checkout.resolved),
            "head_commit": MetadataValue.text(checkout.head_commit),
            "default_branch": MetadataValue.text(checkout.default_branch or "(detached)"),
            "license": MetadataValue.text(license_id),
            "size_bytes": MetadataValue.int(checkout.size_bytes),
            "head_changed": MetadataValue.bool(head_changed),
            "previous_commit": MetadataValue.text(previous or "(none)"),
            "cloned": MetadataValue.bool(checkout.cloned),
            "local_path": MetadataValue.path(str(checkout.path)),
        }
        return step.output(table, metadata, checkout.head_commit)
