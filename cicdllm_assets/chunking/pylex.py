"""Python statement boundaries from a light lexer (no AST): fast enough to run on every file.

Strings and comments are matched by one regular expression, so lines inside multi-line
strings are never mistaken for statements; statements at a given indentation are then found
with an anchored regex. The result matches ``ast`` for top-level defs and classes on ordinary
code (tests compare the two), at a fraction of the cost of building a syntax tree.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from functools import lru_cache

_LEX_RE = re.compile(
    r"#[^\n]*"
    r'|"""[^"\\]*(?:(?:\\[\s\S]|"(?!""))[^"\\]*)*(?:"""|\Z)'
    r"|'''[^'\\]*(?:(?:\\[\s\S]|'(?!''))[^'\\]*)*(?:'''|\Z)"
    r'|"[^"\\\n]*(?:\\[\s\S][^"\\\n]*)*"?'
    r"|'[^'\\\n]*(?:\\[\s\S][^'\\\n]*)*'?"
)
_DEF_RE = re.compile(r"(?:async[ \t]+)?def[ \t]+(\w+)|class[ \t]+(\w+)")
_CONTINUATION_RE = re.compile(r"(?:else|elif|except|finally)\b|[)\]}]")
_IMPORT_RE = re.compile(r"(?:import|from)[ \t]")
_STATEMENT_START_RE = re.compile(r"[^ \t\n\r#]")
_HEADER_END_RE = re.compile(r":[ \t]*(?:#[^\n]*)?$", re.MULTILINE)


@dataclass(frozen=True)
class Statement:
    """A statement starting at ``line`` (0-based; decorators and comments above included)."""

    line: int
    kind: str  # "def", "class", "import" or "other"
    name: str
    def_line: int  # the line of ``def``/``class`` itself (== line when nothing is attached)


@lru_cache(maxsize=64)
def _indent_re(indent: str) -> re.Pattern[str]:
    # A literal "\n<indent>" prefix lets the regex engine scan fast (no per-position "^" tests).
    return re.compile("\n" + re.escape(indent) + r"(?=[^ \t\n\r#])")


class PyLexer:
    """Line-level facts about one Python source text."""

    def __init__(self, text: str, starts: list[int]) -> None:
        self.text = text
        self.starts = starts  # line start offsets plus len(text)
        self.in_string: set[int] = set()
        for match in _LEX_RE.finditer(text):
            s, e = match.span()
            if text.find("\n", s, e) == -1:
                continue
            line = bisect_right(starts, s)
            while line < len(starts) - 1 and starts[line] < e:
                self.in_string.add(line)
                line += 1

    def line_of(self, pos: int) -> int:
        """0-based line containing character ``pos``."""
        return bisect_right(self.starts, pos) - 1

    def _is_comment(self, line: int, indent: str) -> bool:
        s = self.starts[line]
        return self.text.startswith(indent + "#", s) and line not in self.in_string

    def statements(self, a: int, b: int, indent: str) -> list[Statement]:
        """Statements at exactly ``indent`` within lines [a, b)."""
        text, starts = self.text, self.starts
        raw: list[tuple[int, str, str]] = []
        pattern = _indent_re(indent)
        positions: list[int] = []
        if a == 0:  # line 0 has no newline before it
            if _STATEMENT_START_RE.match(text, len(indent)) and text.startswith(indent):
                positions.append(len(indent))
        else:
            head = pattern.match(text, starts[a] - 1)
            if head is not None:
                positions.append(head.end())
        positions.extend(m.end() for m in pattern.finditer(text, starts[a], max(starts[a], starts[b] - 1)))
        for pos in positions:
            line = self.line_of(pos)
            if line in self.in_string:
                continue
            if _CONTINUATION_RE.match(text, pos):
                continue
            if line > 0 and text.endswith("\\\n", starts[line - 1], starts[line]):
                continue
            if text.startswith("@", pos):
                raw.append((line, "decorator", ""))
                continue
            definition = _DEF_RE.match(text, pos)
            if definition:
                kind = "def" if definition.group(1) else "class"
                raw.append((line, kind, definition.group(1) or definition.group(2)))
            elif _IMPORT_RE.match(text, pos):
                raw.append((line, "import", ""))
            else:
                raw.append((line, "other", ""))
        out: list[Statement] = []
        pending: int | None = None
        for line, kind, name in raw:
            if kind == "decorator":
                pending = line if pending is None else pending
                continue
            begin = pending if pending is not None else line
            pending = None
            if kind in ("def", "class"):
                floor = out[-1].def_line + 1 if out else a
                while begin - 1 >= max(a, floor) and self._is_comment(begin - 1, indent):
                    begin -= 1
            out.append(Statement(begin, kind, name, line))
        if pending is not None:
            out.append(Statement(pending, "other", "", pending))
        return out

    def body_indent(self, def_line: int, end: int) -> tuple[int, str] | None:
        """(first body line, its indentation) of the block opened at ``def_line``; None if inline."""
        text, starts = self.text, self.starts
        header = _HEADER_END_RE.search(text, starts[def_line], starts[end])
        if header is None:
            return None
        line = bisect_left(starts, header.end() + 1)
        while line < end:
            s, e = starts[line], starts[line + 1]
            chunk = text[s:e]
            if chunk.strip() and line not in self.in_string:
                indent = chunk[: len(chunk) - len(chunk.lstrip(" \t"))]
                return (line, indent) if indent else None
            line += 1
        return None
