"""Git-style glob matching for include/exclude filters (``**`` spans directories)."""

from __future__ import annotations

import posixpath
import re
from functools import lru_cache


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == n:
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            char = pattern[i]
            if char == "*":
                out.append("[^/]*")
            elif char == "?":
                out.append("[^/]")
            elif char == "[":
                end = pattern.find("]", i + 1)
                if end == -1:
                    out.append(re.escape(char))
                else:
                    body = pattern[i + 1 : end].replace("\\", "\\\\")
                    if body.startswith("!"):
                        body = "^" + body[1:]
                    out.append(f"[{body}]")
                    i = end
            else:
                out.append(re.escape(char))
            i += 1
    return re.compile("".join(out) + r"\Z")


def glob_match(path: str, pattern: str) -> bool:
    """Whether a repo-relative posix ``path`` matches ``pattern``.

    ``**`` matches any number of directories (including none), ``*`` and ``?`` stay within
    one path segment, and a pattern without ``/`` also matches the file's base name
    (like ``.gitignore``), so ``*.lock`` matches ``a/b/c.lock``.
    """
    pattern = pattern.strip().lstrip("/")
    if not pattern:
        return False
    if _compile(pattern).match(path):
        return True
    return "/" not in pattern and bool(_compile(pattern).match(posixpath.basename(path)))


def first_match(path: str, patterns: list[str]) -> str | None:
    """The first pattern in ``patterns`` that matches ``path``, or None."""
    for pattern in patterns:
        if glob_match(path, pattern):
            return pattern
    return None
