"""Keep the Dagster dynamic partitions "repos" equal to the entries of repos.txt.

The sensor (``automation/repos_sensor.py``) and the CLI (``cicdllm repos sync``, ``cicdllm run``)
share :func:`plan_sync`; :func:`sync_partitions` applies the plan to an instance directly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from dagster import DagsterInstance

from cicdllm_assets.config import Settings
from cicdllm_assets.config.models import ProcessingConfig
from cicdllm_assets.partitions import REPOS_PARTITIONS_NAME
from cicdllm_assets.repos.repos_file import RepoEntry, read_repos_file

__all__ = ["load_entries", "open_instance", "plan_sync", "repo_processing", "sync_partitions"]


def load_entries(settings: Settings) -> list[RepoEntry]:
    """The validated entries of the configured repos.txt (raises ReposFileError)."""
    return read_repos_file(settings.repos_file)


def plan_sync(existing: Iterable[str], entries: Sequence[RepoEntry]) -> tuple[list[str], list[str]]:
    """(keys to add in file order, keys to remove sorted) to make ``existing`` match ``entries``."""
    current = set(existing)
    wanted = [entry.key for entry in entries]
    wanted_set = set(wanted)
    added = [key for key in wanted if key not in current]
    removed = sorted(current - wanted_set)
    return added, removed


def sync_partitions(instance: DagsterInstance, settings: Settings) -> tuple[list[str], list[str]]:
    """Apply repos.txt to the instance's "repos" partitions; return (added, removed).

    Raises :class:`~cicdllm_assets.repos.repos_file.ReposFileError` (nothing is changed) when
    repos.txt is invalid.
    """
    entries = load_entries(settings)
    added, removed = plan_sync(instance.get_dynamic_partitions(REPOS_PARTITIONS_NAME), entries)
    if added:
        instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, added)
    for key in removed:
        instance.delete_dynamic_partition(REPOS_PARTITIONS_NAME, key)
    return added, removed


def open_instance(settings: Settings) -> DagsterInstance:
    """The project's persistent Dagster instance (``$DAGSTER_HOME`` or ``storage.dagster_home``).

    Delegates to :func:`cicdllm_assets.runner.instance.open_instance`, which also writes the
    project's dagster.yaml on first use, so the CLI, ``cicdllm run`` and ``dagster dev`` share one
    instance. Raises ``InstanceError`` when it cannot be opened.
    """
    from cicdllm_assets.runner.instance import open_instance as open_project_instance

    # Dagster's storage migrations log every step at INFO through alembic; keep the CLI readable.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return open_project_instance(settings)


def repo_processing(settings: Settings, repo: str) -> ProcessingConfig:
    """``processing`` as it applies to partition ``repo`` (its repos.txt options merged in)."""
    from cicdllm_assets.repos.repos_file import ReposFileError, find_entry, read_repos_file_lenient

    try:
        entries, _ = read_repos_file_lenient(settings.repos_file)
    except ReposFileError:
        return settings.config.processing
    entry = find_entry(entries, repo)
    return entry.processing(settings.config.processing) if entry else settings.config.processing
