"""The entries of repos.txt as the pipeline applies them: the partition plan and per-repo processing.

The sensor (``automation/repos_sensor.py``) and the CLI (``cicdllm repos sync``, ``cicdllm run``)
share :func:`plan_sync`; :func:`cicdllm_assets.runner.instance.sync_partitions` applies the plan
to a Dagster instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cicdllm_assets.config import Settings
from cicdllm_assets.config.models import ProcessingConfig
from cicdllm_assets.repos.repos_file import RepoEntry, read_repos_file

__all__ = ["load_entries", "plan_sync", "repo_processing"]


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


def repo_processing(settings: Settings, repo: str) -> ProcessingConfig:
    """``processing`` as it applies to partition ``repo`` (its repos.txt options merged in)."""
    from cicdllm_assets.repos.repos_file import ReposFileError, find_entry, read_repos_file_lenient

    try:
        entries, _ = read_repos_file_lenient(settings.repos_file)
    except ReposFileError:
        return settings.config.processing
    entry = find_entry(entries, repo)
    return entry.processing(settings.config.processing) if entry else settings.config.processing
