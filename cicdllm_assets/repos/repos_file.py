"""Parse and validate ``repos.txt``: one repository per line, each mapped to a partition key.

Accepted entries (optionally followed by ``@ref``: a branch, tag or commit):

- ``https://host/owner/name`` (``.git`` optional), ``ssh://[user@]host[:port]/owner/name``,
  and the scp-like ``[user@]host:owner/name.git``.
- A local path, relative to the directory of ``repos.txt`` (``.`` is that directory itself).
  Local repositories are cloned into the cache like remote ones, so work never touches the
  user's checkout; only their *committed* state is used. A path with spaces is written in
  double or single quotes (``"../my repo"@main``) or with backslash-escaped spaces
  (``../my\\ repo``).

Per-repository options follow the entry, separated by whitespace (see :func:`split_options`):
``include=GLOB[,GLOB...]`` replaces ``processing.include_globs`` for this repository only and
``exclude=GLOB[,GLOB...]`` adds to ``processing.exclude_globs``; both may repeat. For example
``https://github.com/pallets/click@8.1.7 include=src/**`` or ``. include=cicdllm_assets/**/*.py``.

Rejected, with the file name and line number: transport helpers (``ext::``, ``fd::``, any
``xxx::``), entries starting with ``-``, any other scheme (``http://``, ``git://``, ``ftp://``;
``file://`` too: write the plain local path instead), credentials in URLs (never echoed:
the message shows ``***``), duplicates (same repository and ref), local paths that do not exist,
malformed refs. Every bad line is reported at once in one :class:`ReposFileError`.

Partition keys are readable and deterministic: ``github.com/pallets/click`` becomes
``github.com-pallets-click``, ``…@8.1.7`` becomes ``github.com-pallets-click@8.1.7`` and a local
path becomes ``local-<directory name>``. They use only ``[A-Za-z0-9._+@~-]`` (a subset of what
Dagster partition keys allow). When two entries map to the same key, the first one in the file
keeps the plain key and later ones get ``~<8 hex>`` (a hash of their repository and ref), so
appending lines never renames an existing partition.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from cicdllm_assets.config.models import ProcessingConfig
from cicdllm_assets.errors import REPOS_FILE, CicdllmError

__all__ = [
    "BadLine",
    "RepoEntry",
    "ReposFileError",
    "find_entry",
    "parse_entry",
    "parse_repos_lenient",
    "parse_repos_text",
    "read_repos_file",
    "read_repos_file_lenient",
    "redact_credentials",
]

EntryKind = Literal["remote", "local"]

_ALLOWED_SCHEMES = frozenset({"https", "ssh", "git+ssh", "ssh+git"})
_TRANSPORT_HELPER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._-]*::")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP_LIKE = re.compile(r"^(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*):(?P<path>[^/].*|/.+)$")
_SCP_WITH_PASSWORD = re.compile(r"^[^/@:\s]+:[^/@\s]*@")
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._~+-]+$")
_USER = re.compile(r"^[A-Za-z0-9._-]+$")
_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/+-]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_INLINE_COMMENT = re.compile(r"\s+#.*$")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_MAX_KEY_LEN = 120
_MAX_SHOWN = 120
"""Characters of a bad entry quoted in its error message (a 2,000-character line is cut)."""


def redact_credentials(text: str) -> str:
    """Mask the user-info part of URLs (``https://user:token@host`` -> ``https://***@host``)."""
    text = _URL_USERINFO.sub(r"\1***@", text)
    return _SCP_WITH_PASSWORD.sub("***@", text)


@dataclass(frozen=True)
class BadLine:
    """One bad line of a repos file (``text`` is already free of credentials)."""

    line_no: int
    text: str
    message: str

    def render(self) -> str:
        """``line N: 'entry': reason``."""
        return f"line {self.line_no}: {self.text!r}: {self.message}"


def _shown(text: str) -> str:
    """A bad entry as quoted in an error: free of credentials, at most ``_MAX_SHOWN`` characters."""
    text = redact_credentials(text)
    return text if len(text) <= _MAX_SHOWN else f"{text[:_MAX_SHOWN]}... ({len(text)} characters)"


class ReposFileError(CicdllmError, ValueError, category=REPOS_FILE, permanent=True):
    """A repos file has bad lines; ``errors`` lists all of them."""

    def __init__(self, source: str, errors: list[BadLine]) -> None:
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {source}:{e.line_no}: {e.text!r}: {e.message}" for e in errors)
        count = f"{len(errors)} invalid line{'s' if len(errors) != 1 else ''}"
        super().__init__(f"{source}: {count}:\n{lines}")


class _EntryError(CicdllmError, ValueError):
    """Internal: why a single entry is invalid."""


@dataclass(frozen=True)
class RepoEntry:
    """One valid repos.txt entry.

    ``url`` is what git clones (a URL, or an absolute path for local entries); ``identity``
    is the normalized repository (``host/owner/name`` or the absolute path) used to detect
    duplicates; ``key`` is the Dagster partition key.
    """

    line_no: int
    spec: str
    kind: EntryKind
    url: str
    ref: str | None
    identity: str
    key: str
    local_path: Path | None = None
    include_globs: tuple[str, ...] = ()
    exclude_globs: tuple[str, ...] = ()

    @property
    def is_local(self) -> bool:
        """True for a local path entry."""
        return self.kind == "local"

    def to_dict(self) -> dict[str, object]:
        """Plain data for JSON output."""
        return {
            "key": self.key,
            "line": self.line_no,
            "spec": self.spec,
            "kind": self.kind,
            "url": self.url,
            "ref": self.ref,
            "identity": self.identity,
            "include": list(self.include_globs),
            "exclude": list(self.exclude_globs),
        }

    def processing(self, base: ProcessingConfig) -> ProcessingConfig:
        """``base`` with this repository's own include globs (replacing) and exclude globs (added)."""
        if not self.include_globs and not self.exclude_globs:
            return base
        return base.model_copy(
            update={
                "include_globs": list(self.include_globs or base.include_globs),
                "exclude_globs": [*base.exclude_globs, *self.exclude_globs],
            }
        )


OPTION_KEYS = ("include", "exclude")
_OPTION = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)=(.*)$")


def split_options(line: str) -> tuple[str, dict[str, tuple[str, ...]]]:
    """Split trailing ``key=GLOB[,GLOB]`` options off a repos.txt line: (entry, {key: globs}).

    Only whitespace-separated trailing tokens containing ``=`` are options, so the entry
    itself is passed on untouched. Unknown keys, empty values, absolute globs and ``..``
    segments are errors.
    """
    tokens = line.split()
    options: dict[str, list[str]] = {}
    while len(tokens) > 1:
        match = _OPTION.match(tokens[-1])
        if match is None:
            break
        tokens.pop()
        key, value = match.group(1), match.group(2)
        if key not in OPTION_KEYS:
            raise _EntryError(f"unknown option {key!r} (expected {', '.join(k + '=GLOB' for k in OPTION_KEYS)})")
        globs = [glob for glob in value.split(",") if glob]
        if not globs:
            raise _EntryError(f"option {key}= needs at least one glob, e.g. {key}=src/**")
        for glob in globs:
            if glob.startswith("/") or ".." in glob.split("/"):
                raise _EntryError(f"{key} glob {glob!r} must be relative to the repository root, without '..'")
        options[key] = globs + options.get(key, [])
    body = line[: _token_end(line, len(tokens))] if tokens else line
    return body.strip(), {key: tuple(value) for key, value in options.items()}


def _token_end(line: str, count: int) -> int:
    """Index just past the ``count``-th whitespace-separated token of ``line``."""
    matches = list(re.finditer(r"\S+", line))
    return matches[count - 1].end()


def _validate_ref(ref: str) -> str:
    if not ref:
        raise _EntryError("empty ref after '@'")
    bad = (
        not _REF.match(ref)
        or ".." in ref
        or "//" in ref
        or "/." in ref
        or ref.endswith(("/", ".", ".lock"))
        or len(ref) > 200
    )
    if bad:
        raise _EntryError(f"invalid ref {ref!r} (expected a branch, tag or commit sha)")
    return ref


def _split_ref(text: str) -> tuple[str, str | None]:
    if "@" not in text:
        return text, None
    body, ref = text.rsplit("@", 1)
    return body, _validate_ref(ref)


def _normalize_repo_path(path: str) -> str:
    """``/owner/name.git/`` -> ``owner/name`` (segments validated)."""
    stripped = path.strip("/")
    if stripped.endswith(".git"):
        stripped = stripped[: -len(".git")]
    segments = stripped.split("/") if stripped else []
    if not segments:
        raise _EntryError("missing repository path (expected host/owner/name)")
    for segment in segments:
        if segment in (".", "..") or not _PATH_SEGMENT.match(segment):
            raise _EntryError(f"invalid repository path segment {segment!r}")
    return "/".join(segments)


def _parse_url(text: str, scheme: str) -> tuple[str, str | None, str]:
    """(clone url, ref, identity) for an https/ssh URL."""
    rest = text[len(scheme) + 3 :]
    authority, _, path = rest.partition("/")
    if "?" in rest or "#" in rest:
        raise _EntryError("query strings and fragments are not allowed in repository URLs")
    user = ""
    if "@" in authority:
        userinfo, authority = authority.rsplit("@", 1)
        if scheme == "https" or ":" in userinfo:
            raise _EntryError("credentials in URLs are not allowed (use a git credential helper or an SSH key)")
        if not _USER.match(userinfo):
            raise _EntryError("invalid user name in URL")
        user = userinfo
    host, _, port = authority.partition(":")
    if not _HOST.match(host) or (port and not port.isdigit()):
        raise _EntryError(f"invalid host {authority!r}")
    path, ref = _split_ref(path)
    repo_path = _normalize_repo_path(path)
    host_id = host.lower() + (f":{port}" if port else "")
    url = f"{scheme.lower()}://{user + '@' if user else ''}{host_id}/{path.strip('/')}"
    return url, ref, f"{host_id}/{repo_path}"


def _parse_scp(match: re.Match[str]) -> tuple[str, str | None, str]:
    """(clone url, ref, identity) for ``[user@]host:path``."""
    user, host, path = match.group("user"), match.group("host"), match.group("path")
    if not _HOST.match(host):
        raise _EntryError(f"invalid host {host!r}")
    path, ref = _split_ref(path)
    repo_path = _normalize_repo_path(path)
    url = f"{user + '@' if user else ''}{host.lower()}:{path}"
    return url, ref, f"{host.lower()}/{repo_path}"


def _sanitize(text: str) -> str:
    cleaned = _KEY_UNSAFE.sub("-", text)
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    cleaned = re.sub(r"-{2,}", "-", cleaned)
    return cleaned.strip("-.") or "repo"


def _short_hash(identity: str, ref: str | None) -> str:
    return hashlib.sha256(f"{identity}@{ref or ''}".encode()).hexdigest()[:8]


def _base_key(kind: EntryKind, identity: str, ref: str | None, local_path: Path | None) -> str:
    if kind == "local":
        assert local_path is not None  # noqa: S101 - invariant of local entries
        base = "local-" + _sanitize(local_path.name or "root")
    else:
        base = _sanitize(identity.replace("/", "-").replace(":", "-"))
    if len(base) > _MAX_KEY_LEN:
        base = base[: _MAX_KEY_LEN - 9].rstrip("-.") + "-" + _short_hash(identity, None)
    if ref:
        safe_ref = _sanitize(ref.replace("/", "-"))
        if len(safe_ref) > 60:
            safe_ref = safe_ref[:51].rstrip("-.") + "-" + hashlib.sha256(ref.encode()).hexdigest()[:8]
        base = f"{base}@{safe_ref}"
    return base


def _unquote(text: str) -> tuple[str, bool]:
    """``"a b"@ref`` / ``'a b'`` / ``a\\ b`` -> (``a b@ref``, True); other text unchanged, False."""
    if text[:1] in ("'", '"'):
        end = text.find(text[0], 1)
        if end < 0:
            raise _EntryError(f"unterminated quote {text[0]}")
        body, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith("@"):
            raise _EntryError("only '@ref' may follow a quoted path")
        if not body:
            raise _EntryError("empty quoted path")
        return body + rest, True
    if "\\ " in text:
        return text.replace("\\ ", " "), True
    return text, False


def _exists(path: Path) -> bool:
    """``path.exists()``, with an OS refusal (name too long, ...) as a line error, not a crash."""
    try:
        return path.exists()
    except OSError as exc:
        raise _EntryError(f"not a usable local path: {exc.strerror or exc}") from None


def parse_entry(spec: str, base_dir: Path, line_no: int = 1) -> RepoEntry:
    """Validate one entry (no comment, no surrounding whitespace); raise ``ValueError`` if bad.

    The returned entry's ``key`` is its base key; :func:`parse_repos_text` disambiguates
    collisions between entries of one file.
    """
    text = spec.strip()
    if not text:
        raise _EntryError("empty entry")
    if _CONTROL.search(text):
        raise _EntryError("control characters are not allowed")
    if text.startswith("-"):
        raise _EntryError("an entry must not start with '-' (it would be read as a git option)")
    if _TRANSPORT_HELPER.match(text):
        raise _EntryError("git transport helpers ('ext::', 'fd::', 'xxx::') are not allowed")
    original = text
    text, quoted = _unquote(text)
    if not quoted and any(ch.isspace() for ch in text):
        raise _EntryError(
            "an entry cannot contain whitespace (one repository per line;"
            ' quote a local path with spaces: "my repo" or my\\ repo)'
        )
    if _SCP_WITH_PASSWORD.match(text):
        raise _EntryError("credentials in URLs are not allowed (use a git credential helper or an SSH key)")

    kind: EntryKind
    local_path: Path | None = None
    scheme_match = _SCHEME.match(text)
    scp_match = _SCP_LIKE.match(text) if scheme_match is None else None
    if scheme_match is not None:
        scheme = scheme_match.group(1).lower()
        if scheme == "file":
            raise _EntryError("file:// URLs are not supported; write the local path instead")
        if scheme not in _ALLOWED_SCHEMES:
            raise _EntryError(f"unsupported scheme {scheme!r}: use https://, ssh:// or git@host:owner/name")
        kind = "remote"
        url, ref, identity = _parse_url(text, scheme_match.group(1))
    elif scp_match is not None and "/" not in scp_match.group("host") and not quoted:
        kind = "remote"
        url, ref, identity = _parse_scp(scp_match)
    else:
        kind = "local"
        candidate, ref = text, None
        if "@" in text and not _exists(base_dir / text):
            candidate, ref = _split_ref(text)
        resolved = (base_dir / Path(candidate).expanduser()).resolve()
        if not _exists(resolved):
            first = candidate.split("/", 1)[0]
            hint = f" (did you mean https://{text}?)" if "." in first.strip(".") and "/" in candidate else ""
            raise _EntryError(f"local path does not exist: {resolved}{hint}")
        if not resolved.is_dir():
            raise _EntryError(f"local path is not a directory: {resolved}")
        local_path = resolved
        url = identity = str(resolved)
    key = _base_key(kind, identity, ref, local_path)
    return RepoEntry(
        line_no=line_no,
        spec=original,
        kind=kind,
        url=url,
        ref=ref,
        identity=identity,
        key=key,
        local_path=local_path,
    )


def _strip_line(raw: str) -> str:
    line = raw.strip()
    if line.startswith("#"):
        return ""
    return _INLINE_COMMENT.sub("", line).strip()


def parse_repos_lenient(text: str, base_dir: Path) -> tuple[list[RepoEntry], list[BadLine]]:
    """Parse repos.txt content into (valid entries with final keys, errors of the bad lines)."""
    entries: list[RepoEntry] = []
    errors: list[BadLine] = []
    seen: dict[tuple[str, str | None], int] = {}
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = _strip_line(raw)
        if not line:
            continue
        shown = _shown(line)
        try:
            spec, options = split_options(line)
            entry = replace(
                parse_entry(spec, base_dir, line_no),
                include_globs=options.get("include", ()),
                exclude_globs=options.get("exclude", ()),
            )
        except _EntryError as exc:
            errors.append(BadLine(line_no, shown, str(exc)))
            continue
        identity = (entry.identity, entry.ref)
        if identity in seen:
            errors.append(BadLine(line_no, shown, f"duplicate of line {seen[identity]} (same repository and ref)"))
            continue
        seen[identity] = line_no
        entries.append(entry)
    return _disambiguate(entries), errors


def parse_repos_text(text: str, base_dir: Path, source: str = "repos.txt") -> list[RepoEntry]:
    """Parse repos.txt content; raise :class:`ReposFileError` listing every bad line."""
    entries, errors = parse_repos_lenient(text, base_dir)
    if errors:
        raise ReposFileError(source, errors)
    return entries


def _disambiguate(entries: list[RepoEntry]) -> list[RepoEntry]:
    """The first entry with a key keeps it; later ones get ``~<hash>`` (file order)."""
    taken: set[str] = set()
    result: list[RepoEntry] = []
    for entry in entries:
        key = entry.key
        if key in taken:
            key = f"{entry.key}~{_short_hash(entry.identity, entry.ref)}"
        taken.add(key)
        result.append(_replace_key(entry, key))
    return result


def _replace_key(entry: RepoEntry, key: str) -> RepoEntry:
    return entry if key == entry.key else replace(entry, key=key)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReposFileError(str(path), [BadLine(0, str(path), "file does not exist")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReposFileError(str(path), [BadLine(0, str(path), f"cannot read: {exc}")]) from None


def read_repos_file(path: Path) -> list[RepoEntry]:
    """Read and validate a repos file (raises :class:`ReposFileError`, also when unreadable)."""
    return parse_repos_text(_read_text(path), path.parent, str(path))


def read_repos_file_lenient(path: Path) -> tuple[list[RepoEntry], ReposFileError | None]:
    """The valid entries of a repos file and, if some lines are bad, the error listing them.

    Used where one bad line must not stop the other repositories (the ``repositories`` asset);
    an unreadable file still raises :class:`ReposFileError`.
    """
    entries, errors = parse_repos_lenient(_read_text(path), path.parent)
    return entries, (ReposFileError(str(path), errors) if errors else None)


def find_entry(entries: Iterable[RepoEntry], key: str) -> RepoEntry | None:
    """The entry with this partition key, if any."""
    return next((entry for entry in entries if entry.key == key), None)
