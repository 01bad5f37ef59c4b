"""Read a commit's tree and blobs straight from git objects (never the working tree)."""

from __future__ import annotations

import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from cicdllm_assets.errors import GIT, CicdllmError
from cicdllm_assets.lifecycle import Closing

_REV_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/@{}^~-]{0,254}")
_SHA_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")

MODE_SYMLINK = "120000"
MODE_SUBMODULE = "160000"


class GitError(CicdllmError, RuntimeError, category=GIT):
    """A git command or operation failed, or printed something unexpected; the message is
    readable and free of credentials.

    ``permanent`` is True when trying again cannot help (a ref that does not exist, an empty
    repository, a local source that is not a repository, no git executable); network
    failures and timeouts are not permanent.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class TreeEntry:
    """One ``git ls-tree -r -l`` row."""

    mode: str
    kind: str
    sha: str
    size: int
    path: str

    @property
    def is_symlink(self) -> bool:
        """Git stores symlinks as blobs with mode 120000 whose content is the target."""
        return self.mode == MODE_SYMLINK


def _check_rev(rev: str) -> str:
    if not _REV_RE.fullmatch(rev) or ".." in rev:
        raise GitError(f"not a valid commit or ref name: {rev!r}")
    return rev


def _git(repo: Path, *args: str) -> bytes:
    try:
        result = subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["git", "-C", str(repo), *args],  # noqa: S607
            check=True,
            capture_output=True,
        )
    except FileNotFoundError as exc:
        raise GitError("git executable not found on PATH") from exc
    except subprocess.CalledProcessError as exc:
        message = exc.stderr.decode("utf-8", "replace").strip()
        raise GitError(f"git {' '.join(args[:2])} failed in {repo}: {message}") from exc
    return result.stdout


def resolve_commit(repo: Path, rev: str) -> str:
    """Full sha of ``rev`` (a sha, branch or tag) in ``repo``."""
    out = _git(repo, "rev-parse", "--verify", "--end-of-options", f"{_check_rev(rev)}^{{commit}}")
    return out.decode().strip()


def list_tree(repo: Path, commit: str) -> list[TreeEntry]:
    """Every file tracked at ``commit`` (recursive, with blob sizes), sorted by path."""
    out = _git(repo, "ls-tree", "-r", "-l", "-z", "--full-tree", "--end-of-options", _check_rev(commit))
    entries: list[TreeEntry] = []
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, _, raw_path = record.partition(b"\t")
        parts = meta.split()
        if len(parts) != 4:
            raise GitError(f"unexpected ls-tree line: {record[:200]!r}")
        mode, kind, sha, size = (p.decode() for p in parts)
        path = raw_path.decode("utf-8", "replace")
        entries.append(TreeEntry(mode, kind, sha, int(size) if size.isdigit() else 0, path))
    entries.sort(key=lambda e: e.path)
    return entries


class BlobReader(Closing):
    """A persistent ``git cat-file --batch`` process; thread-safe, use as a context manager."""

    def __init__(self, repo: Path) -> None:
        self.repo = Path(repo)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self.bytes_read = 0

    def _process(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                ["git", "-C", str(self.repo), "cat-file", "--batch"],  # noqa: S607
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        return self._proc

    def read(self, sha: str) -> bytes:
        """The raw content of blob ``sha``."""
        if not _SHA_RE.fullmatch(sha):
            raise GitError(f"not an object id: {sha!r}")
        with self._lock:
            proc = self._process()
            assert proc.stdin is not None and proc.stdout is not None  # noqa: S101
            proc.stdin.write(sha.encode() + b"\n")
            proc.stdin.flush()
            header = proc.stdout.readline().split()
            if len(header) != 3 or header[1] != b"blob":
                raise GitError(f"cannot read blob {sha} in {self.repo}: {b' '.join(header).decode()}")
            size = int(header[2])
            data = proc.stdout.read(size)
            proc.stdout.read(1)  # trailing newline
            self.bytes_read += size
            return data

    def read_many(self, shas: list[str]) -> list[bytes]:
        """Blobs in order, requests pipelined (no round trip per object)."""
        for sha in shas:
            if not _SHA_RE.fullmatch(sha):
                raise GitError(f"not an object id: {sha!r}")
        if not shas:
            return []
        with self._lock:
            proc = self._process()
            assert proc.stdin is not None and proc.stdout is not None  # noqa: S101
            stdin, stdout = proc.stdin, proc.stdout
            payload = "".join(f"{sha}\n" for sha in shas).encode()

            def feed() -> None:  # a thread, so a full stdout pipe cannot deadlock the writer
                try:
                    stdin.write(payload)
                    stdin.flush()
                except (OSError, ValueError):  # the process was stopped after an error
                    pass

            writer = threading.Thread(target=feed, name="cicdllm-cat-file", daemon=True)
            writer.start()
            out: list[bytes] = []
            try:
                for sha in shas:
                    header = stdout.readline().split()
                    if len(header) != 3 or header[1] != b"blob":
                        raise GitError(f"cannot read blob {sha} in {self.repo}: {b' '.join(header).decode()}")
                    data = stdout.read(int(header[2]))
                    stdout.read(1)
                    out.append(data)
            except GitError:
                self.close_locked()  # first, so a blocked writer gets a broken pipe
                writer.join()
                raise
            writer.join()
            self.bytes_read += sum(len(b) for b in out)
            return out

    def close_locked(self) -> None:
        """Stop the process (caller holds the lock); a later read starts a new one."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=30)
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    stream.close()
            self._proc = None

    def close(self) -> None:
        """Stop the cat-file process."""
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            self._proc.wait(timeout=30)
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
