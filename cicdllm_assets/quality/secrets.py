"""Secret detection and redaction.

Detection combines the maintained `detect-secrets` plugins (AWS, GitHub, GitLab, Slack,
Stripe, JWT, OpenAI, PyPI, npm, basic auth in URLs, keyword assignments, high-entropy
base64/hex literals, …) with a few targeted patterns it lacks:

* whole multi-line PEM / PGP / PuTTY private key blocks (detect-secrets only flags
  the ``BEGIN … PRIVATE KEY`` marker line);
* secret-looking values in config files (.env, YAML, INI, JSON, TOML, properties),
  including unquoted ones such as ``password: hunter2`` and connection strings such as
  ``DATABASE_URL=postgres://user:pass@host/db``;
* the password part of any ``scheme://user:password@host`` URL.

Plugins are instantiated once per process and called directly (no global detect-secrets
settings are mutated, so this is thread-safe). Regex-only plugins run over the whole text
in one pass; the keyword and entropy plugins, the expensive ones, only see lines that a
cheap pre-filter marks as candidates.

Each secret is replaced by a typed placeholder such as ``[REDACTED:aws_access_key]``;
redaction repeats until :func:`find_secrets` reports nothing, so
``find_secrets(redact_secrets(t).text) == []`` holds for any text.
"""

from __future__ import annotations

import logging
import math
import os
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

logger = logging.getLogger(__name__)

PLACEHOLDER_PREFIX = "[REDACTED:"
_PLACEHOLDER_RE = re.compile(r"\[REDACTED:[a-z0-9_]+\]")
_MAX_PASSES = 4


@dataclass(frozen=True)
class RedactionResult:
    """Text with secrets replaced by typed placeholders like ``[REDACTED:aws_access_key]``."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Number of secrets replaced."""
        return sum(self.counts.values())


@dataclass(frozen=True)
class SecretFinding:
    """One secret found in a text: its type, character span and 1-based line."""

    kind: str
    start: int
    end: int
    line: int
    detector: str

    def describe(self) -> str:
        """A log-safe description (never the secret itself)."""
        return f"{self.kind} at line {self.line} (by {self.detector})"


# --------------------------------------------------------------------------- detect-secrets

_TYPE_SLUGS = {
    "AWS Access Key": "aws_access_key",
    "Basic Auth Credentials": "basic_auth",
    "GitHub Token": "github_token",
    "GitLab Token": "gitlab_token",
    "JSON Web Token": "jwt",
    "Private Key": "private_key",
    "Slack Token": "slack_token",
    "Stripe Access Key": "stripe_key",
    "Secret Keyword": "secret_keyword",
    "Base64 High Entropy String": "high_entropy_base64",
    "Hex High Entropy String": "high_entropy_hex",
    "OpenAI Token": "openai_key",
    "PyPI Token": "pypi_token",
    "NPM tokens": "npm_token",
    "SendGrid API Key": "sendgrid_key",
    "Twilio API Key": "twilio_key",
    "Azure Storage Account access key": "azure_storage_key",
}
# Public IPs are not credentials, and flagging every address in code examples would
# damage the dataset more than it protects anyone.
_EXCLUDED_PLUGINS = frozenset({"IPPublicDetector"})
_LINE_PLUGINS = frozenset({"KeywordDetector", "Base64HighEntropyString", "HexHighEntropyString"})
# Regex plugins that only fire on `<keyword> = <value>` assignments: run on keyword lines only.
_KEYWORD_LINE_PLUGINS = frozenset(
    {"CloudantDetector", "IbmCloudIamDetector", "IbmCosHmacDetector", "SoftlayerDetector"}
)


def _slug(secret_type: str) -> str:
    known = _TYPE_SLUGS.get(secret_type)
    if known:
        return known
    return re.sub(r"[^a-z0-9]+", "_", secret_type.lower()).strip("_") or "secret"


@dataclass(frozen=True)
class _Plugins:
    whole_text: tuple[Any, ...]
    keyword_lines: tuple[Any, ...]
    per_line: tuple[Any, ...]
    heuristics: tuple[Any, ...]


@lru_cache(maxsize=1)
def _plugins() -> _Plugins:
    """Instantiate every detect-secrets plugin once (default limits and options)."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.filters import heuristic

    whole: list[Any] = []
    keyword_lines: list[Any] = []
    per_line: list[Any] = []
    classes: list[Any] = list(get_mapping_from_secret_type_to_class().values())
    for plugin_class in classes:
        name = plugin_class.__name__
        if name in _EXCLUDED_PLUGINS:
            continue
        plugin = plugin_class()
        if name in _LINE_PLUGINS:
            per_line.append(plugin)
        elif name in _KEYWORD_LINE_PLUGINS:
            keyword_lines.append(plugin)
        else:
            whole.append(plugin)
    for group in (whole, keyword_lines, per_line):
        group.sort(key=lambda p: type(p).__name__)
    heuristics = (
        heuristic.is_sequential_string,
        heuristic.is_potential_uuid,
        heuristic.is_templated_secret,
        heuristic.is_prefixed_with_dollar_sign,
        heuristic.is_not_alphanumeric_string,
    )
    logger.debug("detect-secrets plugins: %d whole-text, %d per-line", len(whole), len(per_line))
    return _Plugins(tuple(whole), tuple(keyword_lines), tuple(per_line), heuristics)


@lru_cache(maxsize=1)
def _whole_text_gate() -> re.Pattern[str] | None:
    """One regex matching wherever any whole-text plugin's own patterns match (the plugins
    then run only on texts it matches); None when the patterns cannot be combined."""
    parts = []
    for plugin in _plugins().whole_text:
        denylist = getattr(plugin, "denylist", None)
        if not denylist:
            return None
        for regex in denylist:
            flags = ("i" if regex.flags & re.IGNORECASE else "") + ("x" if regex.flags & re.VERBOSE else "")
            flags += "m" if regex.flags & re.MULTILINE else ""
            flags += "s" if regex.flags & re.DOTALL else ""
            parts.append(
                f"(?{flags}:{regex.pattern}\n)"
                if "x" in flags
                else (f"(?{flags}:{regex.pattern})" if flags else f"(?:{regex.pattern})")
            )
    try:
        return re.compile("|".join(parts))
    except re.error:  # e.g. a back-reference or a repeated group name
        logger.debug("detect-secrets patterns cannot be combined; every plugin runs on every text")
        return None


# A line can only hold a keyword or high-entropy finding if it names a secret-ish key or
# has a quoted run of base64/hex characters: everything else skips the per-line plugins.
_KEY_HINT = r"pass|pwd|pw\b|secret|token|key|cred|dsn|url|conn|bearer|contrase|auth"
_ENTROPY_HINT = r"""['"][A-Za-z0-9+/=_\-]{8,}['"]"""
_KEY_LINES = re.compile(_KEY_HINT)  # searched in lower-cased text: much faster than IGNORECASE
_KEY_LINES_ANYCASE = re.compile(_KEY_HINT, re.IGNORECASE)
_ENTROPY_LINES = re.compile(_ENTROPY_HINT)


def _keyword_lines(text: str) -> list[tuple[int, str]]:
    """Lines naming a secret-ish key (case-insensitive)."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a few Unicode characters change length when lower-cased
        return _candidate_lines(text, _KEY_LINES_ANYCASE)
    return [(start, text[start : start + len(line)]) for start, line in _candidate_lines(lowered, _KEY_LINES)]


def _candidate_lines(text: str, hint: re.Pattern[str]) -> list[tuple[int, str]]:
    """(offset, line) of every line in which ``hint`` matches, in order (one search per line)."""
    lines = []
    match = hint.search(text)
    while match is not None:
        start = text.rfind("\n", 0, match.start()) + 1
        end = text.find("\n", match.end())
        if end == -1:
            end = len(text)
        lines.append((start, text[start:end]))
        match = hint.search(text, end)
    return lines


def _line_starts(text: str) -> list[int]:
    starts = [0]
    pos = text.find("\n")
    while pos != -1:
        starts.append(pos + 1)
        pos = text.find("\n", pos + 1)
    return starts


def _occurrences(haystack: str, needle: str, base: int) -> Iterator[tuple[int, int]]:
    if not needle:
        return
    pos = haystack.find(needle)
    while pos != -1:
        yield base + pos, base + pos + len(needle)
        pos = haystack.find(needle, pos + len(needle))


def _is_placeholder(value: str) -> bool:
    return PLACEHOLDER_PREFIX in value or "REDACTED" in value


_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-+/=")


def _widen(text: str, start: int, end: int) -> tuple[int, int]:
    """Grow a span over adjacent token characters, so no piece of a secret is left behind."""
    while start > 0 and text[start - 1] in _TOKEN_CHARS:
        start -= 1
    while end < len(text) and text[end] in _TOKEN_CHARS:
        end += 1
    return start, end


def _regex_plugin_spans(plugin: Any, text: str, base: int = 0) -> Iterator[tuple[int, int]]:
    """Spans of a regex plugin's hits: its own (validated) values located via its denylist."""
    values = {v for v in plugin.analyze_string(text) if isinstance(v, str) and v}
    if not values:
        return
    denylist = getattr(plugin, "denylist", None)
    if denylist is None:
        for value in values:
            if len(value) >= 4 and not _is_placeholder(value):
                yield from _occurrences(text, value, base)
        return
    for regex in denylist:
        for match in regex.finditer(text):
            whole = match.group(0)
            if not any(value in whole for value in values):
                continue
            groups = [i for i in range(1, (regex.groups or 0) + 1) if match.group(i)]
            best = max(groups, key=lambda i: len(match.group(i)), default=0)
            if best and len(match.group(best)) >= 8:
                start, end = match.span(best)
            else:
                start, end = match.span(0)
                # Regexes with context (e.g. a leading space or quote) must not swallow it.
                while start < end and not text[start].isalnum():
                    start += 1
                while end > start and not text[end - 1].isalnum() and text[end - 1] != "=":
                    end -= 1
            if end > start and not _is_placeholder(text[start:end]):
                start, end = _widen(text, start, end)
                yield base + start, base + end


def _detect_secrets_spans(
    text: str, path: str, keyword_lines: list[tuple[int, str]], entropy_lines: list[tuple[int, str]]
) -> Iterator[tuple[int, int, str, str]]:
    plugins = _plugins()
    gate = _whole_text_gate()
    if gate is None or gate.search(text):
        for plugin in plugins.whole_text:
            for start, end in _regex_plugin_spans(plugin, text):
                yield start, end, _slug(plugin.secret_type), type(plugin).__name__
    for offset, line in keyword_lines:
        for plugin in plugins.keyword_lines:
            for start, end in _regex_plugin_spans(plugin, line, offset):
                yield start, end, _slug(plugin.secret_type), type(plugin).__name__
    filename = path or "adhoc.txt"
    seen: set[int] = set()
    for offset, line in sorted(keyword_lines + entropy_lines):
        if offset in seen or len(line) < 8:
            continue
        seen.add(offset)
        for plugin in plugins.per_line:
            for found in plugin.analyze_line(filename=filename, line=line, line_number=0, context=None):
                value = found.secret_value
                if not value or _is_placeholder(value) or any(h(value) for h in plugins.heuristics):
                    continue
                if type(plugin).__name__ == "KeywordDetector" and _is_reference(value):
                    continue  # env var names, special tokens, templates
                for start, end in _occurrences(line, value, offset):
                    yield start, end, _slug(plugin.secret_type), type(plugin).__name__


# --------------------------------------------------------------------------- targeted patterns

_PEM_BLOCK = re.compile(
    r"-----BEGIN (?P<label>[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?)-----"
    r"(?:.*?-----END (?P=label)-----|[\sA-Za-z0-9+/=:,\-\"'\\]*)",  # complete, or truncated to the end
    re.DOTALL,
)
# The end of a key block whose beginning is in another chunk: base64 lines, then the END marker.
_PEM_TAIL = re.compile(
    r"(?:^[ \t\"']*[A-Za-z0-9+/=]{16,}[ \t\"',\\n]*\r?\n)*"
    r"[ \t\"']*-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----",
    re.MULTILINE,
)
# The middle of a key (or any embedded binary blob): 2+ consecutive lines of bare base64.
_BASE64_BLOCK = re.compile(
    r"(?:^[ \t\"']*[A-Za-z0-9+/]{40,}={0,2}[ \t\"',\\n]*(?:\r?\n|\Z)){2,}",
    re.MULTILINE,
)
# Bare (unquoted) runs of token characters: a secret cut in pieces by a chunk boundary, or a
# token in prose. Only runs mixing upper case, lower case and digits with high entropy count.
_TOKEN_RUN = re.compile(r"(?<![A-Za-z0-9_\-+/])[A-Za-z0-9_\-+/]{24,}={0,2}(?![A-Za-z0-9_\-+/])")
TOKEN_RUN_MIN_ENTROPY = 4.2
_PUTTY_KEY = re.compile(r"PuTTY-User-Key-File-\d:.*?(?:Private-MAC: *\S+|\Z)", re.DOTALL)

_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-+/=]*")
_URL_PASSWORD = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@'\"`]+:(?P<value>[^\s@/'\"`]+)@[^\s'\"`]")

# Tokens with a documented prefix that detect-secrets lacks (or only matches in an old format).
_PREFIXED_TOKENS = (
    (re.compile(r"AIza[0-9A-Za-z_\-]{35}"), "google_api_key"),
    (re.compile(r"(?<![A-Za-z0-9])sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{32,}"), "openai_key"),
    (re.compile(r"(?<![A-Za-z0-9])github_pat_[A-Za-z0-9_]{22,}"), "github_token"),
    (re.compile(r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9\-]{10,}"), "slack_token"),
    (re.compile(r"(?<![A-Za-z0-9])[rs]k_(?:live|test)_[0-9A-Za-z]{16,}"), "stripe_key"),
)
# A credential in a URL's query string: `?key=…`, `&access_token=…`, `?sig=…`.
_URL_QUERY_SECRET = re.compile(
    r"[?&](?:key|api[_\-]?key|apikey|access[_\-]?token|auth[_\-]?token|token|secret|client[_\-]?secret|"
    r"password|passwd|pwd|sig|signature|code)=(?P<value>[^&\s'\"#`<>)\]]+)",
    re.IGNORECASE,
)

_SENSITIVE_KEY_WORDS = (
    r"password|passwd|passphrase|(?<![A-Za-z])pass|pwd|secret|secret[_\-.]?key|client[_\-.]?secret|token|"
    r"access[_\-.]?token|refresh[_\-.]?token|auth[_\-.]?token|bearer|api[_\-.]?key|apikey|"
    r"access[_\-.]?key|secret[_\-.]?access[_\-.]?key|private[_\-.]?key(?:[_\-.]?id)?|signing[_\-.]?key|"
    r"encryption[_\-.]?key|master[_\-.]?key|session[_\-.]?key|credentials?|"
    r"database[_\-.]?url|db[_\-.]?url|\w*dsn|connection[_\-.]?string|conn[_\-.]?str|"
    r"(?:redis|mongo(?:db)?|postgres(?:ql)?|mysql|amqp|broker)[_\-.]?url"
)
# The secret-ish word must END the key (`db_password`, not `password_field`).
_SECRET_KEY_END = re.compile(rf"(?:{_SENSITIVE_KEY_WORDS})$", re.IGNORECASE)
# key, optional closing quote (JSON), separator, value (quoted or bare to the end of the token).
_ASSIGNMENT = re.compile(
    r"""(?<![A-Za-z0-9_\-.])(?P<key>[A-Za-z0-9_\-.]++)(?P<kq>["']?)[ \t]*+(?P<sep>:=|=>|=|:)(?!=)[ \t]*+"""
    r"""(?:"(?P<dq>[^"\n]*)"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s'"#;,][^\s'"#;]*))"""
)
# `password: str = "hunter2"` (typed assignment in Python, TypeScript, Kotlin …).
_ANNOTATED_ASSIGNMENT = re.compile(
    r"""(?<![A-Za-z0-9_])(?P<key>[A-Za-z0-9_]++)[ \t]*+:[ \t]*+[A-Za-z_][\w\[\]., |]*?[ \t]*=[ \t]*"""
    r"""(?P<q>["'])(?P<value>[^"'\n]+)(?P=q)"""
)
_CONFIG_EXTENSIONS = frozenset(
    {".env", ".yaml", ".yml", ".ini", ".cfg", ".conf", ".cnf", ".toml", ".properties", ".json", ".envrc"}
)
_CODE_LIKE = re.compile(r"""^(?:[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*(?:\(.*|\[.*)?|[\w.]+\(.*)[,;)]*$""")
_NOT_SECRET_VALUES = frozenset(
    {
        "",
        "none",
        "null",
        "nil",
        "true",
        "false",
        "yes",
        "no",
        "on",
        "off",
        "required",
        "optional",
        "str",
        "string",
        "bytes",
        "int",
        "bool",
        "secretstr",
        "undefined",
        "env",
        "file",
        "[]",
        "{}",
        "***",
        "****",
        "********",
        "xxx",
        "xxxx",
        "|",
        ">",
        "|-",
        ">-",
        "{",
        "[",
        "(",
        "optional[str]",
        "str|none",
        "any",
        "dict",
        "list",
        "object",
        "secret",
        "password",
        "token",
    }
)


def _key_kind(key: str) -> str:
    lowered = key.lower()
    if re.search(r"url|dsn|conn", lowered):
        return "connection_string"
    if re.search(r"pass|pwd", lowered):
        return "password"
    if "private" in lowered:
        return "private_key"
    if "token" in lowered or "bearer" in lowered:
        return "token"
    if re.search(r"api[_\-.]?key|apikey|access[_\-.]?key", lowered):
        return "api_key"
    if "cred" in lowered:
        return "credential"
    return "secret"


def _is_reference(value: str) -> bool:
    """Environment/template references and placeholders are not secrets."""
    stripped = value.strip()
    if stripped.lower().rstrip(",;") in _NOT_SECRET_VALUES:
        return True
    if stripped.startswith(("$", "%(", "{{", "<", "${", "#{", "@", "&", "*", "!", "os.", "env(", "process.env")):
        return True
    if _is_placeholder(stripped) or len(stripped) < 3:
        return True
    if stripped.startswith("[") or re.fullmatch(r"<\|?[\w\-]+\|?>", stripped):
        return True  # lists, regex classes, special tokens ([PAD], <|im_end|>)
    if re.fullmatch(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+", stripped):
        return True  # the NAME of an environment variable, e.g. "AWS_SECRET_ACCESS_KEY"
    return bool(re.fullmatch(r"[\d.\-_]+", stripped))  # numbers, versions, ttl values


def _file_kind(path: str) -> str:
    """'config' (bare values are literals), 'code' (bare values are expressions) or 'unknown'."""
    if not path:
        return "unknown"
    name = os.path.basename(path).lower()
    _, ext = os.path.splitext(name)
    if name.startswith(".env") or name.endswith(".env") or ext in _CONFIG_EXTENSIONS:
        return "config"
    if ext in {".md", ".rst", ".txt", ""}:
        return "unknown"
    return "code"


def is_config_path(path: str) -> bool:
    """True for .env, YAML, INI, JSON, TOML … files, whose bare values are literals."""
    return _file_kind(path) == "config"


def _assignment_spans(
    text: str, path: str, keyword_lines: list[tuple[int, str]]
) -> Iterator[tuple[int, int, str, str]]:
    for offset, line in keyword_lines:
        for start, end, kind, detector in _line_assignment_spans(line, path):
            yield offset + start, offset + end, kind, detector


def _line_assignment_spans(text: str, path: str) -> Iterator[tuple[int, int, str, str]]:
    kind_of_file = _file_kind(path)
    for match in _ANNOTATED_ASSIGNMENT.finditer(text):
        value = match.group("value")
        if not _SECRET_KEY_END.search(match.group("key")):
            continue
        if value and not _is_reference(value):
            yield match.start("value"), match.end("value"), _key_kind(match.group("key")), "pattern:assignment"
    for match in _ASSIGNMENT.finditer(text):
        key = match.group("key")
        if not _SECRET_KEY_END.search(key):
            continue
        for group in ("dq", "sq", "bare"):
            value = match.group(group)
            if value is not None:
                break
        else:  # pragma: no cover - the regex always sets one
            continue
        if not value or _is_reference(value) or value.lower() == key.lower():
            continue  # `PASS = "PASS"` is an enum member, not a password
        if group == "bare":
            bare = value.rstrip(",;)")
            sep = match.group("sep")
            if kind_of_file == "code" or _is_reference(bare):
                continue
            following = text[match.end(group) : match.end(group) + 3].lstrip(" \t")
            if value != bare or following.startswith(("=", ")", ",")):
                continue  # a parameter annotation or call argument: `password: str = ...`
            if text[match.end(group) : match.end(group) + 1] in ("'", '"'):
                continue  # an expression going on into a string: `credential: password="…"`
            if kind_of_file == "unknown" and sep in {"=", ":=", "=>"} and _CODE_LIKE.match(bare):
                # `password = get_password()` in prose/code: an expression, unless .env-style
                # (KEY=value with an upper-case key and no spaces around '=').
                env_style = key.isupper() and text[match.end("kq") : match.end("kq") + 1] == "="
                if not env_style:
                    continue
            if kind_of_file == "unknown" and sep == ":" and _CODE_LIKE.match(bare) and "(" in bare:
                continue
            value = bare
            if not value:
                continue
        start = match.start(group)
        yield start, start + len(value), _key_kind(key), "pattern:assignment"


def shannon_entropy(value: str) -> float:
    """Bits per character of ``value``."""
    if not value:
        return 0.0
    counts = Counter(value)
    total = len(value)
    return -sum(n / total * math.log2(n / total) for n in counts.values())


def _looks_random(run: str) -> bool:
    """Mixed upper/lower/digits and high entropy: a token, not an identifier or a hash."""
    core = run.strip("=_-")
    if len(core) < 24 or _is_placeholder(core):
        return False
    if not (any(c.isdigit() for c in core) and any(c.isupper() for c in core) and any(c.islower() for c in core)):
        return False
    if (
        "_" in core
        and re.fullmatch(r"[A-Za-z0-9]+(?:_[A-Za-z0-9]+)+", core)
        and max(len(part) for part in core.split("_")) < 16
    ):
        return False  # snake_case / CONSTANT_NAMES with numbers
    camel = sum(len(m) for m in re.findall(r"[A-Z][a-z]{2,}|[a-z]{3,}", core))
    if camel >= 0.6 * len(core):
        return False  # CamelCase / compound identifiers (_V1ValidatorWithValuesKwOnlyClsMethod)
    if "/" in core and any(len(seg) >= 3 and seg.isalpha() and seg.islower() for seg in core.split("/")):
        return False  # a path or URL (…/dagster/blob/<sha>)
    return shannon_entropy(core) >= TOKEN_RUN_MIN_ENTROPY


def _pattern_spans(text: str, path: str, keyword_lines: list[tuple[int, str]]) -> Iterator[tuple[int, int, str, str]]:
    for match in _PEM_BLOCK.finditer(text):
        yield match.start(), match.end(), "private_key", "pattern:pem_block"
    for match in _PEM_TAIL.finditer(text):
        yield match.start(), match.end(), "private_key", "pattern:pem_block"
    for match in _BASE64_BLOCK.finditer(text):
        block = match.group(0).rstrip("\r\n")
        if re.search(r"[0-9+/]", block) and re.search(r"[A-Z]", block) and re.search(r"[a-z]", block):
            yield match.start(), match.start() + len(block), "base64_block", "pattern:base64_block"
    for match in _TOKEN_RUN.finditer(text):
        run = match.group(0)
        if _looks_random(run):
            yield match.start(), match.end(), "high_entropy_token", "pattern:token_run"
        elif "/" in run:  # a path: a token can still be one of its directory or file names
            offset = match.start()
            for segment in run.split("/"):
                if len(segment) >= 24 and _looks_random(segment):
                    yield offset, offset + len(segment), "high_entropy_token", "pattern:token_run"
                offset += len(segment) + 1
    for match in _PUTTY_KEY.finditer(text):
        yield match.start(), match.end(), "private_key", "pattern:putty_key"
    for match in _JWT.finditer(text):
        yield match.start(), match.end(), "jwt", "pattern:jwt"
    for pattern, kind in _PREFIXED_TOKENS:
        for match in pattern.finditer(text):
            yield match.start(), match.end(), kind, "pattern:prefixed_token"
    if "=" in text:
        for match in _URL_QUERY_SECRET.finditer(text):
            value = match.group("value")
            if len(value) >= 8 and not _is_reference(value) and any(c.isdigit() for c in value):
                yield match.start("value"), match.end("value"), "url_query_secret", "pattern:url_query"
    for match in _URL_PASSWORD.finditer(text):
        value = match.group("value")
        if not _is_reference(value):
            yield match.start("value"), match.end("value"), "url_password", "pattern:url_credentials"
    yield from _assignment_spans(text, path, keyword_lines)


# --------------------------------------------------------------------------- public API


_GENERIC_DETECTORS = frozenset(
    {
        "pattern:assignment",
        "pattern:url_credentials",
        "pattern:token_run",
        "BasicAuthDetector",
        "KeywordDetector",
        "Base64HighEntropyString",
        "HexHighEntropyString",
    }
)


def _merge(spans: list[tuple[int, int, str, str]]) -> list[tuple[int, int, str, str]]:
    """Merge overlapping spans; a specific detector (AWS, GitHub, PEM …) names the cluster
    over a generic one (keyword, entropy, assignment), then the longer span wins."""
    spans.sort(key=lambda s: (s[0], -(s[1] - s[0])))

    def rank(span: list[Any] | tuple[int, int, str, str]) -> tuple[int, int]:
        return (0 if span[3] in _GENERIC_DETECTORS else 1, span[1] - span[0])

    merged: list[list[Any]] = []
    best: list[tuple[int, int]] = []
    for start, end, kind, detector in spans:
        if merged and start < merged[-1][1]:
            last = merged[-1]
            candidate = rank((start, end, kind, detector))
            if candidate > best[-1]:
                last[2], last[3] = kind, detector
                best[-1] = candidate
            last[1] = max(last[1], end)
            continue
        merged.append([start, end, kind, detector])
        best.append(rank((start, end, kind, detector)))
    return [(s, e, k, d) for s, e, k, d in merged]


def _scan(text: str, path: str) -> list[tuple[int, int, str, str]]:
    """Every detector over ``text`` (no prefilter)."""
    keyword_lines = _keyword_lines(text)
    entropy_lines = _candidate_lines(text, _ENTROPY_LINES)
    spans = list(_pattern_spans(text, path, keyword_lines))
    spans.extend(_detect_secrets_spans(text, path, keyword_lines, entropy_lines))
    # Never report a placeholder (or a piece of one) as a secret.
    placeholders = [(m.start(), m.end()) for m in _PLACEHOLDER_RE.finditer(text)]
    if placeholders:
        spans = [
            span
            for span in spans
            if not any(p_start <= span[0] and span[1] <= p_end for p_start, p_end in placeholders)
        ]
    return spans


# --------------------------------------------------------------------------- prefilter

# A line can only hold a secret that some detector reports if it has one of: a run of 16+
# token characters with a digit (or 40+ without: key bodies, base64 blocks), a secret-ish
# key word followed by an assignment, comparison or quote, a URL, or one of the literal
# prefixes below. One cheap pass finds those lines; the detectors then run on them only
# (joined, with a separator no detector crosses). Multi-line key blocks need their context:
# a text with a key marker is scanned whole.
_RUN = re.compile(r"(?<![A-Za-z0-9+/=_\-])(?=[A-Za-z0-9+/=_\-]{16})[A-Za-z+/=_\-]*[0-9]")
# Prefixed tokens that can be short or digit-free (longer ones with a digit are runs already).
_MARKERS = ("AIza", "k_live_", "k_test_", "glpat-", "xox")
# A URL can carry a credential before its host or in its query string.
_URL_MARKER = re.compile(r"://[^\s'\"`<>]*[@?&]")
_WHOLE_TEXT_MARKERS = ("PRIVATE KEY", "PuTTY-User-Key", "Private-MAC")
_KEY_PREFIXES = (
    "api",
    "auth",
    "service",
    "account",
    "db",
    "database",
    "priv",
    "private",
    "client",
    "access",
    "secret",
    "signing",
    "encryption",
    "master",
    "session",
    "cloudant",
    "cl",
    "clou",
    "softlayer",
    "sl",
    "ibm",
    "cos",
    "hmac",
    "storage",
    "subscription",
    "app",
    "aws",
    "azure",
    "gcp",
    "google",
    "stripe",
    "github",
    "gitlab",
    "slack",
    "openai",
    "license",
    "webhook",
    "?",
    "&",
)
_URL_PREFIXES = (
    "database",
    "db",
    "redis",
    "mongo",
    "mongodb",
    "postgres",
    "postgresql",
    "mysql",
    "amqp",
    "broker",
    "conn",
    "connection",
)


_CLOSE_AND_SEP = r"""["'\]]{0,2}[ \t]*[:=!>"'`]"""
# Words that make a key secret-ish: detect-secrets' keywords may carry a suffix
# (`password_hash: …`), ours must end the key (`db_token = …`).
_SUFFIXED_WORDS = ("password", "passwd", "pwd", "secret", "contrase", "key")
_END_WORDS = ("pass", "token", "bearer", "credential", "credentials", "dsn", "url", "str", "string", "phrase")
_KEY_WORD_PATTERNS = tuple((word, re.compile(word + r"[\w\-.]*" + _CLOSE_AND_SEP)) for word in _SUFFIXED_WORDS) + tuple(
    (word, re.compile(word + _CLOSE_AND_SEP)) for word in _END_WORDS
)
_PREFIXED_WORDS = {
    "key": _KEY_PREFIXES,
    "url": _URL_PREFIXES,
    "str": ("conn", "connection"),
    "string": ("conn", "connection"),
    "phrase": ("pass",),
}
_COMPARED_KEY = tuple(re.compile(op + r"[ \t]*[\w.]*(?:pass|pwd|secret|contrase)") for op in ("==", "!="))
_SEPARATOR = "\n\x00\n"  # no detector pattern matches across a NUL on its own line


def _word_start(match: re.Match[str]) -> int:
    return match.string.rfind(" ", 0, match.start()) + 1


def _word_end(match: re.Match[str]) -> int:
    end = match.string.find(" ", match.end())
    return len(match.string) if end == -1 else end


def _line_bounds(text: str, start: int, end: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    return line_start, len(text) if line_end == -1 else line_end


def _candidate_segments(text: str) -> list[tuple[int, int]]:
    """Merged (start, end) line ranges of ``text`` that may hold a secret; [] when none can."""
    if any(marker in text for marker in _WHOLE_TEXT_MARKERS):
        return [(0, len(text))]
    hits: list[int] = []
    # A run lies inside one whitespace-separated word: scan only the long words (C-speed split).
    long_words = [word for word in text.split() if len(word) >= 16]
    if long_words:
        for word in {
            match.string[_word_start(match) : _word_end(match)] for match in _RUN.finditer(" ".join(long_words))
        }:
            pos = text.find(word)
            while pos != -1:
                hits.append(pos)
                pos = text.find(word, pos + len(word))
    for marker in _MARKERS:
        pos = text.find(marker)
        while pos != -1:
            hits.append(pos)
            pos = text.find(marker, pos + len(marker))
    if "://" in text:
        hits.extend(match.start() for match in _URL_MARKER.finditer(text))
    lowered = text.lower()
    if len(lowered) != len(text):  # a few characters change length when lower-cased
        lowered = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    for word, pattern in _KEY_WORD_PATTERNS:
        if word not in lowered:
            continue
        prefixes = _PREFIXED_WORDS.get(word)
        for match in pattern.finditer(lowered):
            start = match.start()
            if prefixes is None or lowered[max(0, start - 14) : start].rstrip("_-.").endswith(prefixes):
                hits.append(start)
    for compared in _COMPARED_KEY:
        hits.extend(match.start() for match in compared.finditer(lowered))
    if not hits:
        return []
    hits.sort()
    segments: list[tuple[int, int]] = []
    for hit in hits:
        if segments and hit <= segments[-1][1]:
            continue
        start, end = _line_bounds(text, hit, hit)
        if segments and start <= segments[-1][1] + 1:  # adjacent lines form one segment
            segments[-1] = (segments[-1][0], end)
        else:
            segments.append((start, end))
    return segments


def may_hold_secrets(texts: Sequence[str]) -> list[bool]:
    """Per text, whether the prefilter finds a candidate line (``False``: no detector can fire).

    One prefilter pass over all texts joined by :data:`_SEPARATOR` (no prefilter pattern crosses
    it, so every text's candidate line is one of the joined text's): cheap for a batch of clean texts.
    """
    joined = _SEPARATOR.join(texts)
    if any(marker in joined for marker in _WHOLE_TEXT_MARKERS):  # such texts are scanned whole: flag them alone
        whole = [any(marker in text for marker in _WHOLE_TEXT_MARKERS) for text in texts]
        rest = [i for i, flagged in enumerate(whole) if not flagged]
        for i, flagged in zip(rest, may_hold_secrets([texts[i] for i in rest]), strict=True):
            whole[i] = flagged
        return whole
    starts: list[int] = []
    cursor = 0
    for text in texts:
        starts.append(cursor)
        cursor += len(text) + len(_SEPARATOR)
    flags = [False] * len(texts)
    for seg_start, seg_end in _candidate_segments(joined):
        for index in range(max(0, bisect_right(starts, seg_start) - 1), bisect_right(starts, seg_end)):
            flags[index] = True
    return flags


def _find_spans(text: str, path: str) -> list[tuple[int, int, str, str]]:
    if not text:
        return []
    segments = _candidate_segments(text)
    if not segments:
        return []
    if len(segments) == 1 and segments[0] == (0, len(text)):
        return _merge(_scan(text, path))
    pieces: list[str] = []
    sub_starts: list[int] = []
    cursor = 0
    for start, end in segments:
        sub_starts.append(cursor)
        pieces.append(text[start:end])
        cursor += end - start + len(_SEPARATOR)
    spans: list[tuple[int, int, str, str]] = []
    for start, end, kind, detector in _scan(_SEPARATOR.join(pieces), path):
        index = bisect_right(sub_starts, start) - 1
        seg_start, seg_end = segments[index]
        offset = seg_start - sub_starts[index]
        spans.append((start + offset, min(end + offset, seg_end), kind, detector))
    return _merge(spans)


def find_secrets(text: str, path: str = "") -> list[SecretFinding]:
    """Every secret in ``text`` (``path`` hints the file type), in order of position."""
    spans = _find_spans(text, path)
    if not spans:
        return []
    starts = _line_starts(text)
    return [
        SecretFinding(kind=kind, start=start, end=end, line=bisect_right(starts, start), detector=detector)
        for start, end, kind, detector in spans
    ]


def redact_secrets(text: str, path: str = "") -> RedactionResult:
    """Replace every secret in ``text`` (``path`` hints the file type, e.g. .env, .yaml)."""
    if not isinstance(text, str):
        raise TypeError(f"redact_secrets expects str, got {type(text).__name__}")
    counts: Counter[str] = Counter()
    current = text
    for _ in range(_MAX_PASSES):
        spans = _find_spans(current, path)
        if not spans:
            break
        pieces: list[str] = []
        cursor = 0
        for start, end, kind, _detector in spans:
            pieces.append(current[cursor:start])
            pieces.append(f"[REDACTED:{kind}]")
            counts[kind] += 1
            cursor = end
        pieces.append(current[cursor:])
        current = "".join(pieces)
    return RedactionResult(text=current, counts=dict(sorted(counts.items())))


def redact_field(value: str | None, path: str = "") -> str | None:
    """``value`` with secrets replaced (None stays None): for names, paths, imports, questions."""
    if not value:
        return value
    return _redact_field(value, path)


@lru_cache(maxsize=65536)
def _redact_field(value: str, path: str) -> str:
    """Memoised: symbol names, imports and paths repeat across chunks and files."""
    return redact_secrets(value, path).text


def secret_counts(texts: list[str], path: str = "") -> dict[str, int]:
    """Secret types and counts over several texts (for reports)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(finding.kind for finding in find_secrets(text, path))
    return dict(sorted(counts.items()))
