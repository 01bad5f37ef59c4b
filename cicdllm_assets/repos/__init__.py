"""Repositories: repos.txt parsing, clone/fetch into the cache, licence detection, partition sync."""

from cicdllm_assets.repos.git_ops import CheckoutResult, GitError, sync_repo
from cicdllm_assets.repos.license import NOASSERTION, detect_license
from cicdllm_assets.repos.repos_file import (
    LineError,
    RepoEntry,
    ReposFileError,
    find_entry,
    parse_entry,
    parse_repos_lenient,
    parse_repos_text,
    read_repos_file,
    read_repos_file_lenient,
    redact_credentials,
)
from cicdllm_assets.repos.sync import load_entries, open_instance, plan_sync, sync_partitions

__all__ = [
    "NOASSERTION",
    "CheckoutResult",
    "GitError",
    "LineError",
    "RepoEntry",
    "ReposFileError",
    "detect_license",
    "find_entry",
    "load_entries",
    "open_instance",
    "parse_entry",
    "parse_repos_lenient",
    "parse_repos_text",
    "plan_sync",
    "read_repos_file",
    "read_repos_file_lenient",
    "redact_credentials",
    "sync_partitions",
    "sync_repo",
]
