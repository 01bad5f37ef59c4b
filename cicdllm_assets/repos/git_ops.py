"""Clone or fetch a repos.txt entry into the clone cache and check out its ref (GitPython).

Every entry, local paths included, is cloned into ``<cache_dir>/<partition key>``, so the
pipeline never touches a user's checkout. For a local repository (``.`` = this project) that
means its *committed* state: uncommitted changes in the working tree are not seen (commit
them, or pin nothing and re-run after committing).

Safety: URLs and refs were validated by :mod:`cicdllm_assets.repos.repos_file`; in addition
every git call passes user input after ``--`` / ``--end-of-options``, allows only the
transport the entry needs (``protocol.allow=never`` plus https/ssh for remote entries, file
for local ones, ``protocol.ext.allow=never``), never prompts (``GIT_TERMINAL_PROMPT=0``, ssh
``BatchMode``), skips LFS downloads and hooks, and is killed after
``repos.clone_timeout_seconds``. Error messages have credentials masked.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import git

from cicdllm_assets.repos.repos_file import RepoEntry, redact_credentials
from cicdllm_assets.sources.git import GitError

logger = logging.getLogger(__name__)

__all__ = ["CheckoutResult", "GitError", "sync_repo"]

_SHA = re.compile(r"^[0-9a-f]{40}$")
_HEX = re.compile(r"^[0-9a-fA-F]{7,40}$")
_STDERR_LINES = 6


# git's words for a local source that is missing or is not a repository.
_NOT_A_REPO = ("does not exist", "not a git repository", "does not appear to be a git repository")


@dataclass(frozen=True)
class CheckoutResult:
    """What :func:`sync_repo` found."""

    path: Path
    head_commit: str
    default_branch: str | None
    ref: str | None
    resolved: str
    size_bytes: int
    cloned: bool


def _git_env() -> dict[str, str]:
    env = {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_LFS_SKIP_SMUDGE": "1",
        "GCM_INTERACTIVE": "never",
        "LC_ALL": "C",
    }
    if "GIT_SSH_COMMAND" not in os.environ and "GIT_SSH" not in os.environ:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    return env


def _protocol_options(entry: RepoEntry) -> list[str]:
    allowed = ["file"] if entry.is_local else ["https", "ssh"]
    options = ["-c", "protocol.allow=never", "-c", "protocol.ext.allow=never"]
    for name in allowed:
        options += ["-c", f"protocol.{name}.allow=always"]
    options += ["-c", "core.hooksPath=/dev/null", "-c", "advice.detachedHead=false"]
    return options


class _Git:
    """Runs git for one entry with the safe options, the timeout and readable errors."""

    def __init__(self, entry: RepoEntry, timeout: float) -> None:
        self.entry = entry
        self.timeout = timeout
        self.shown_url = redact_credentials(entry.url)
        self._options = _protocol_options(entry)
        self._env = _git_env()

    def run(self, args: Sequence[str], cwd: Path | None, what: str, check: bool = True) -> tuple[int, str, str]:
        """``git <safe options> <args>``; raise :class:`GitError` on failure when ``check``."""
        runner = git.Git(str(cwd) if cwd is not None else None)
        command = [git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git", *self._options, *args]
        try:
            status, stdout, stderr = runner.execute(
                command,
                with_extended_output=True,
                with_exceptions=False,
                kill_after_timeout=self.timeout,
                env=self._env,
                universal_newlines=True,
            )
        except git.GitCommandNotFound as exc:
            raise GitError("git executable not found; install git", permanent=True) from exc
        if status != 0 and check:
            raise GitError(self._message(what, str(stderr)), permanent=self._permanent(str(stderr)))
        return int(status), str(stdout), str(stderr)

    def _permanent(self, stderr: str) -> bool:
        """A local source that is missing or not a repository stays so; remote errors may heal."""
        if not self.entry.is_local or stderr.startswith("Timeout:"):
            return False
        return any(marker in stderr for marker in _NOT_A_REPO)

    def _message(self, what: str, stderr: str) -> str:
        if stderr.startswith("Timeout:"):
            return f"{what} of {self.shown_url} timed out after {self.timeout:g}s (repos.clone_timeout_seconds)"
        lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("Cloning into")]
        detail = "; ".join(lines[-_STDERR_LINES:]) or "no error output"
        return redact_credentials(f"{what} of {self.shown_url} failed: {detail}")


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Serialize work on one cache directory across processes (parallel runs of a partition)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _origin_url(path: Path) -> str | None:
    try:
        repo = git.Repo(path)
        try:
            return str(repo.remotes.origin.url)
        finally:
            repo.close()
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, AttributeError, ValueError):
        return None


def _remove_tree(path: Path, cache_dir: Path) -> None:
    resolved = path.resolve()
    if cache_dir.resolve() not in resolved.parents:
        raise GitError(f"refusing to delete {resolved}: not inside the clone cache {cache_dir}", permanent=True)
    shutil.rmtree(resolved)


def _clone(runner: _Git, dest: Path, cache_dir: Path) -> None:
    tmp = cache_dir / f".{dest.name}.tmp-{os.getpid()}"
    if tmp.exists():
        _remove_tree(tmp, cache_dir)
    try:
        runner.run(["clone", "--no-checkout", "--origin", "origin", "--", runner.entry.url, str(tmp)], None, "clone")
        if dest.exists():
            _remove_tree(dest, cache_dir)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            _remove_tree(tmp, cache_dir)


def _remote_head(runner: _Git, dest: Path) -> tuple[str | None, str | None]:
    """(default branch, remote HEAD sha) from ``ls-remote --symref``."""
    _, out, _ = runner.run(["ls-remote", "--symref", "origin", "HEAD"], dest, "ls-remote")
    branch: str | None = None
    sha: str | None = None
    for line in out.splitlines():
        if line.startswith("ref: ") and line.endswith("\tHEAD"):
            ref = line[len("ref: ") : -len("\tHEAD")]
            branch = ref.removeprefix("refs/heads/")
        elif line.endswith("\tHEAD"):
            candidate = line.split("\t", 1)[0]
            if _SHA.match(candidate):
                sha = candidate
    return branch, sha


def _rev_parse(runner: _Git, dest: Path, name: str) -> str | None:
    status, out, _ = runner.run(
        ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}"], dest, "rev-parse", check=False
    )
    sha = out.strip()
    return sha if status == 0 and _SHA.match(sha) else None


def _resolve(runner: _Git, dest: Path, ref: str | None, branch: str | None, head_sha: str | None) -> tuple[str, str]:
    """(commit sha, how it was resolved) for the entry's ref or the default branch."""
    if ref is None:
        if branch is not None:
            sha = _rev_parse(runner, dest, f"refs/remotes/origin/{branch}")
            if sha:
                return sha, f"branch {branch} (default)"
        if head_sha is not None:
            if _rev_parse(runner, dest, head_sha) is None:
                runner.run(["fetch", "--quiet", "origin", "--", head_sha], dest, "fetch of HEAD")
            return head_sha, "remote HEAD (detached)"
        raise GitError(f"{runner.shown_url} has no default branch (empty repository?)", permanent=True)
    candidates = [
        (f"refs/remotes/origin/{ref}", f"branch {ref}"),
        (f"refs/tags/{ref}", f"tag {ref}"),
    ]
    if ref.startswith("refs/") or _HEX.match(ref):
        candidates.append((ref, f"commit {ref}" if _HEX.match(ref) else ref))
    for name, how in candidates:
        sha = _rev_parse(runner, dest, name)
        if sha:
            return sha, how
    if _SHA.match(ref.lower()):
        # A commit that no branch or tag reaches: ask for it by id (servers may refuse).
        status, _, _ = runner.run(["fetch", "--quiet", "origin", "--", ref.lower()], dest, "fetch", check=False)
        sha = _rev_parse(runner, dest, ref.lower()) if status == 0 else None
        if sha:
            return sha, f"commit {ref}"
    raise GitError(
        f"ref {ref!r} not found in {runner.shown_url} (no branch, tag or commit of that name)", permanent=True
    )


def _size_bytes(runner: _Git, dest: Path) -> int:
    """Object storage size (loose + packed) from ``git count-objects -v``."""
    _, out, _ = runner.run(["count-objects", "-v"], dest, "count-objects")
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    kib = int(fields.get("size", "0")) + int(fields.get("size-pack", "0"))
    return kib * 1024


def sync_repo(entry: RepoEntry, cache_dir: Path, timeout: float) -> CheckoutResult:
    """Clone (first time) or fetch ``entry`` into ``cache_dir/<key>`` and check out its ref.

    Raises :class:`GitError` with a readable, credential-free message when the repository is
    unreachable, not a repository, the ref does not exist, or git times out.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / entry.key
    runner = _Git(entry, timeout)
    started = time.monotonic()
    with _locked(cache_dir / f".{entry.key}.lock"):
        cloned = False
        if dest.is_dir() and _origin_url(dest) == entry.url:
            runner.run(["fetch", "--quiet", "--prune", "--prune-tags", "--tags", "--force", "origin"], dest, "fetch")
        else:
            if dest.exists():
                logger.info("replacing %s: not a clone of %s", dest, runner.shown_url)
            _clone(runner, dest, cache_dir)
            cloned = True
        branch, head_sha = _remote_head(runner, dest)
        sha, how = _resolve(runner, dest, entry.ref, branch, head_sha)
        runner.run(["checkout", "--quiet", "--force", "--detach", sha, "--"], dest, "checkout")
        runner.run(["clean", "-ffdxq"], dest, "clean")
        size = _size_bytes(runner, dest)
    logger.info(
        "%s %s at %s (%s) in %.1fs",
        "cloned" if cloned else "fetched",
        runner.shown_url,
        sha[:12],
        how,
        time.monotonic() - started,
    )
    return CheckoutResult(
        path=dest,
        head_commit=sha,
        default_branch=branch,
        ref=entry.ref,
        resolved=how,
        size_bytes=size,
        cloned=cloned,
    )


def check_reachable(entry: RepoEntry, timeout: float) -> str:
    """``git ls-remote`` the entry: a short description of what answered; :class:`GitError` if
    the repository or its ref cannot be reached."""
    runner = _Git(entry, timeout)
    _, stdout, _ = runner.run(["ls-remote", "--", entry.url, entry.ref or "HEAD"], None, "ls-remote")
    first = stdout.split()
    if first:
        return f"{runner.shown_url}{'@' + entry.ref if entry.ref else ''} answers ({first[0][:12]})"
    if entry.ref and _HEX.match(entry.ref):
        return f"{runner.shown_url} answers (commit {entry.ref[:12]} is checked at clone time)"
    raise GitError(
        f"{runner.shown_url} has no ref {entry.ref or 'HEAD'!r}; fix the @ref of its repos.txt line", permanent=True
    )
