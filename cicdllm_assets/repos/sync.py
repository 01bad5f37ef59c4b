"""The entries of repos.txt as the pipeline applies them: the partition plan and per-repo processing.

The sensor (``automation/repos_sensor.py``) and the CLI (``cicdllm repos sync``, ``cicdllm run``)
share :func:`plan_sync`; :func:`cicdllm_assets.runner.instance.sync_partitions` applies the plan
to a Dagster instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from cicdllm_assets.config.models import ProcessingConfig
from cicdllm_assets.repos.repos_file import RepoEntry, read_repos_file

__all__ = ["load_entries", "plan_sync", "repo_processing"]


def load_entries(repos_file: Path) -> list[RepoEntry]:
    """The validated entries of ``repos_file``, the configured repos.txt (raises ReposFileError)."""
    return read_repos_file(repos_file)


def plan_sync(existing: Iterable[str], entries: Sequence[RepoEntry]) -> tuple[list[str], list[str]]:
    """(keys to add in file order, keys to remove sorted) to make ``existing`` match ``entries``."""
    current = set(existing)
    wanted = [entry.key for entry in entries]
    wanted_set = set(wanted)
    added = [key for key in wanted if key not in current]
    removed = sorted(current - wanted_set)
    return added, removed


def repo_processing(processing: ProcessingConfig, repos_file: Path, repo: str) -> ProcessingConfig:
    """``processing`` as it applies to partition ``repo`` (its entry's options in ``repos_file`` merged in)."""
    from cicdllm_assets.repos.repos_file import ReposFileError, find_entry, read_repos_file_lenient

    try:
        entries, _ = read_repos_file_lenient(repos_file)
    except ReposFileError:
        return processing
    entry = find_entry(entries, repo)
    return entry.processing(processing) if entry else processing
