"""Chunk plans: where a file's chunks start and end, their symbols and token counts.

A plan is computed from the file text and ONE encoding of the whole file: the token index
at each line start (``Encoding.char_to_token``) gives every line range's token count
without tokenizing the range again. Chunks are packed to ``budget - margin`` tokens so the
few tokens that can merge differently at a chunk's edges when it is tokenized on its own
never push it over ``budget``; pieces cut inside one giant line are re-encoded and checked.
"""

from __future__ import annotations

import re
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, NamedTuple

from tokenizers import Encoding

from cicdllm_assets.chunking.pylex import PyLexer, Statement
from cicdllm_assets.sources.languages import BRACE_LANGUAGES

CHUNKER_VERSION = "3"
IMPORTS_MAX_TOKENS = 64
MAX_SYMBOLS_IN_NAME = 4
ANCHOR_FRACTION = 4  # a definition of at least budget/4 tokens never shares a chunk with what follows

CountFn = Callable[[Sequence[str]], list[int]]
_NEWLINE_RE = re.compile("\n")
_PY_TOP_RE = re.compile(r"^(?:async[ \t]+def|def|class)[ \t]+(\w+)", re.MULTILINE)
_PY_IMPORT_RE = re.compile(r"^(?:import|from)[ \t]+[\w.]+", re.MULTILINE)


class ChunkSpan(NamedTuple):
    """One chunk: 1-based inclusive line span, character span, symbol, estimated tokens."""

    start_line: int
    end_line: int
    start_char: int
    end_char: int
    symbol: str
    token_count: int
    partial: bool = False  # a piece of one line too long for the budget

    def to_list(self) -> list[object]:
        """Compact JSON form."""
        return [
            self.start_line,
            self.end_line,
            self.start_char,
            self.end_char,
            self.symbol,
            self.token_count,
            int(self.partial),
        ]

    @classmethod
    def from_list(cls, row: Sequence[Any]) -> ChunkSpan:
        """Inverse of :meth:`to_list` (values come from our own JSON, already typed)."""
        sl, el, sc, ec, sym, tok, part = row
        return cls(sl, el, sc, ec, sym, tok, part == 1)


@dataclass(frozen=True)
class FilePlan:
    """Everything cached per blob: file token count, line count, imports and chunk spans."""

    token_count: int
    line_count: int
    imports: str
    chunks: tuple[ChunkSpan, ...]


def margin_for(budget: int) -> int:
    """Tokens kept free in each chunk for edge effects of tokenizing a chunk on its own."""
    return max(4, budget // 32)


class _TokenIndex:
    """Token index at each line start, computed on demand (a sequence usable with ``bisect``).

    The index of line i is the first token that ends after the line's first character.
    ``Encoding.char_to_token`` scans linearly and converting all offsets to Python costs a
    tuple per token, so every ``SAMPLE``-th token's end is sampled once and each requested
    line is resolved by a short binary search with ``token_to_chars`` (O(1) per call).
    """

    SAMPLE = 64

    def __init__(self, starts: list[int], encoding: Encoding) -> None:
        self.starts = starts
        self.encoding = encoding
        self.total = len(encoding)
        self.sample_ends = [self._end(t) for t in range(self.SAMPLE - 1, self.total, self.SAMPLE)]
        self.memo: dict[int, int] = {0: 0, len(starts) - 1: self.total}
        self.straddle_memo: dict[int, int] = {}

    def _end(self, token: int) -> int:
        chars = self.encoding.token_to_chars(token)
        return chars[1] if chars is not None else 0

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, line: int) -> int:
        value = self.memo.get(line)
        if value is None:
            char = self.starts[line]
            block = bisect_right(self.sample_ends, char)  # first sampled token ending after char
            lo = block * self.SAMPLE
            hi = min(lo + self.SAMPLE, self.total)
            token_to_chars = self.encoding.token_to_chars
            while lo < hi:  # smallest token in [lo, hi) whose end > char
                mid = (lo + hi) // 2
                chars = token_to_chars(mid)
                if chars is not None and chars[1] > char:
                    hi = mid
                else:
                    lo = mid + 1
            value = self.memo[line] = lo
        return value

    def bisect(self, tokens: int, lo: int, hi: int) -> int:
        """``bisect_right(self, tokens, lo, hi)``: the first line in [lo, hi) whose start token
        is past ``tokens``, found from that token's end offset (one bisect over line starts).

        Line ``k`` starts at or before token ``t`` exactly when ``starts[k]`` lies before the
        end of ``t`` (token ends never decrease), so no per-line token search is needed.
        """
        if tokens >= self.total:
            return hi
        chars = self.encoding.token_to_chars(tokens) if tokens >= 0 else None
        if chars is None:
            return bisect_right(self, tokens, lo, hi)
        return min(max(bisect_left(self.starts, chars[1]), lo), hi)

    def straddles(self, line: int) -> int:
        """1 if the token at ``line``'s start began on an earlier line (e.g. ``"\\n    "``)."""
        known = self.straddle_memo.get(line)
        if known is not None:
            return known
        result = 0
        if 0 < line < len(self.starts) - 1:
            token = self[line]
            if token < self.total:
                chars = self.encoding.token_to_chars(token)
                result = 1 if chars is not None and chars[0] < self.starts[line] else 0
        self.straddle_memo[line] = result
        return result


@dataclass
class _Lines:
    starts: list[int]  # char offset of each line start, plus len(text) at the end
    tok: _TokenIndex  # token index at each line start, plus total tokens at the end
    text: str

    @property
    def count(self) -> int:
        return len(self.starts) - 1

    def tokens(self, a: int, b: int) -> int:
        """Tokens of lines [a, b): a token straddling the end of line b-1 counts once more,
        because on its own the range ends with the first part of that token."""
        return self.tok[b] - self.tok[a] + self.tok.straddles(b)

    def line(self, i: int) -> str:
        return self.text[self.starts[i] : self.starts[i + 1]]


def _line_starts(text: str) -> list[int]:
    starts = [0, *(m.end() for m in _NEWLINE_RE.finditer(text))]
    if starts[-1] != len(text):
        starts.append(len(text))
    return starts


def _line_index(text: str, encoding: Encoding, starts: list[int] | None = None) -> _Lines:
    """Line starts and (lazily) the token index at each."""
    if starts is None:
        starts = _line_starts(text)
    return _Lines(starts, _TokenIndex(starts, encoding), text)


LEX_AHEAD_CHARS = 1536  # files shorter than this usually fit one chunk: lexing them ahead is wasted


@dataclass
class Prepared:
    """Token-independent facts about a file, computed while its encoding is still running.

    :func:`plan_file` accepts one to skip that work; without it the same is computed there.
    """

    starts: list[int]
    lexer: PyLexer | None = None
    top: list[Statement] | None = None


def prepare(text: str, language: str) -> Prepared:
    """Line starts, and for longer Python files the lexer and top-level statements."""
    starts = _line_starts(text)
    if language == "python" and len(text) > LEX_AHEAD_CHARS and text.strip():
        lexer = PyLexer(text, starts)
        return Prepared(starts, lexer, lexer.statements(0, len(starts) - 1, ""))
    return Prepared(starts)


# -- segmentation -------------------------------------------------------------------------


@dataclass
class _Segment:
    start: int  # 0-based first line
    end: int  # 0-based exclusive
    symbol: str
    nested: bool = False  # a member of a class too big for one chunk
    definition: bool = False  # a whole function or class (or a markdown section)


def _python_body_segments(
    lexer: PyLexer,
    statements: list[Statement],
    start: int,
    end: int,
    prefix: str,
    default_symbol: str,
    lines: _Lines,
    budget: int,
) -> list[_Segment]:
    """Split lines [start, end) at ``statements``; recurse into classes too big for one chunk."""
    segments: list[_Segment] = []
    group_start = start
    for k, st in enumerate(statements):
        node_start = max(st.line, start) if k else start
        node_end = statements[k + 1].line if k + 1 < len(statements) else end
        if st.kind not in ("def", "class"):
            continue
        nested = bool(prefix)
        if group_start < node_start:
            segments.append(_Segment(group_start, node_start, default_symbol, nested))
        name = f"{prefix}{st.name}"
        body = lexer.body_indent(st.def_line, node_end) if st.kind == "class" else None
        if body is not None and lines.tokens(node_start, node_end) > budget:
            first_body, body_indent = body
            members = lexer.statements(first_body, node_end, body_indent)
            inner_first = members[0].line if members else first_body
            segments.append(_Segment(node_start, inner_first, name, nested))
            segments.extend(
                _python_body_segments(lexer, members, inner_first, node_end, f"{name}.", name, lines, budget)
            )
        else:
            segments.append(_Segment(node_start, node_end, name, nested, definition=True))
        group_start = node_end
    if group_start < end:
        segments.append(_Segment(group_start, end, default_symbol, bool(prefix)))
    return [s for s in segments if s.end > s.start]


def _python_plan(
    lines: _Lines, budget: int, prepared: Prepared | None = None
) -> tuple[list[_Segment], list[tuple[int, int]]]:
    """Top-level (and big-class member) segments plus import line ranges."""
    if prepared is not None and prepared.lexer is not None and prepared.top is not None:
        lexer, top = prepared.lexer, prepared.top
    else:
        lexer = PyLexer(lines.text, lines.starts)
        top = lexer.statements(0, lines.count, "")
    imports: list[tuple[int, int]] = []
    for k, st in enumerate(top):
        if st.kind == "import":
            end = top[k + 1].line if k + 1 < len(top) else lines.count
            while end > st.line + 1 and (not lines.line(end - 1).strip() or lines.line(end - 1).startswith("#")):
                end -= 1
            imports.append((st.line, end))
    return _python_body_segments(lexer, top, 0, lines.count, "", "", lines, budget), imports


_SYMBOL_RE = re.compile(
    r"^\s*(?:export\s+)?(?:default\s+)?(?:pub(?:\([^)]*\))?\s+)?(?:public\s+|private\s+|protected\s+|static\s+|"
    r"async\s+|abstract\s+|final\s+|unsafe\s+|inline\s+)*"
    r"(?:def|class|func|function|fn|struct|enum|trait|impl|interface|module|object|type|namespace|sub|"
    r"proc|macro_rules!)\s+(?:\([^)]*\)\s*)?([A-Za-z_$][\w$:.<>]*)"
)
_IMPORT_RE = re.compile(
    r"^[ \t]*(?:import\b|from\s+\S+\s+import\b|#\s*include\b|use\s+[\w:{]|using\s+[\w.]+\s*;|"
    r"require(?:_relative)?[\s(]|package\s+[\w.]+|extern\s+crate\b|@import\b|library\(|"
    r"(?:const|let|var)\s+\w+\s*=\s*require\()",
    re.MULTILINE,
)
_CLOSERS = ("}", ")", "]", "end", "fi", "done", "esac")


def _symbol_of(line: str) -> str:
    match = _SYMBOL_RE.match(line)
    return match.group(1) if match else ""


class _Scores:
    """How good a cut before line c is: 3 best ... 0 worst (computed on demand)."""

    def __init__(self, lines: _Lines, a: int, b: int, brace: bool) -> None:
        self.lines, self.brace = lines, brace
        sample = (lines.line(c) for c in range(a + 1, min(b, a + 60)))
        indents = [len(t) - len(t.lstrip()) for t in sample if t.strip()]
        self.base = min(indents) if indents else 0
        self.memo: dict[int, int] = {}

    def __call__(self, c: int) -> int:
        score = self.memo.get(c)
        if score is None:
            score = self.memo[c] = self._score(c)
        return score

    def _score(self, c: int) -> int:
        cur, prev = self.lines.line(c), self.lines.line(c - 1)
        stripped, prev_stripped = cur.strip(), prev.strip()
        indent = len(cur) - len(cur.lstrip()) if stripped else -1
        score = 1 if not prev_stripped else 0
        if 0 <= indent <= self.base and not stripped.startswith(_CLOSERS):
            score = 3 if not prev_stripped or (self.brace and prev_stripped.startswith("}")) else 2
        elif self.brace and prev_stripped in ("}", "};", "},", "end") and len(prev) - len(prev.lstrip()) <= self.base:
            score = 3
        return score


class _CutKeys:
    """How good a cut before line c is, as one sortable integer: (class, content hash).

    The class is the syntactic quality of the boundary (Python statement boundaries above
    :class:`_Scores`); the hash is a CRC of the two lines around the cut, so among equally
    good cuts the choice depends on content, never on position or on the size of what comes
    before: an edit elsewhere cannot move it.
    """

    def __init__(self, lines: _Lines, segments: list[_Segment], brace: bool) -> None:
        self.lines = lines
        self.brace = brace
        self.segments = segments
        self.boundary: dict[int, int] = {}
        for seg in segments:
            self.boundary.setdefault(seg.start, 4 if seg.nested else 5)
        self.firsts = [seg.start for seg in segments]
        self.by_start = {seg.start: seg for seg in segments}
        self.scorers: dict[int, _Scores] = {}  # per segment, made when a cut inside it is scored
        self.starts = sorted(self.boundary)
        self.memo: dict[int, int] = {}

    def score(self, c: int) -> int:
        """The syntactic class of a cut before line ``c``."""
        cls = self.boundary.get(c)
        if cls is None:
            k = bisect_right(self.firsts, c) - 1
            scorer = self.scorers.get(k)
            if scorer is None:
                seg = self.segments[k]
                scorer = self.scorers[k] = _Scores(self.lines, seg.start, seg.end, self.brace)
            cls = scorer(c)
        return cls

    def __call__(self, c: int) -> int:
        key = self.memo.get(c)
        if key is None:
            pair = (self.lines.line(c - 1).strip() + "\n" + self.lines.line(c).strip()).encode("utf-8", "replace")
            key = self.memo[c] = (self.score(c) << 32) | zlib.crc32(pair)
        return key


def _split(lines: _Lines, a: int, b: int, budget: int, keys: _CutKeys) -> list[tuple[int, int]]:
    """Cut lines [a, b) into ranges of at most ``budget`` tokens, with content-defined cuts.

    A whole definition (function, class, markdown section) of at least
    ``budget / ANCHOR_FRACTION`` tokens is an *anchor*: the cut after it always stays, so
    it never shares a chunk with what follows. What precedes it (imports, constants,
    comments, small helpers) may join it. Growing an anchor therefore re-packs nothing
    after it and at most the small pieces just before it.

    Otherwise every line starts as its own range; cuts are then removed from the worst to
    the best by :class:`_CutKeys` (inside statements first, statement boundaries last; among
    equals by content hash), each one only if the two ranges it separates fit the budget
    together. A decision depends on the content and sizes of the ranges around the cut,
    never on what lies far before it, so an edit moves at most the cuts near it: its
    neighbours keep their chunks (incremental generation relies on this). A range of one
    line may still exceed the budget (split later by tokens).
    """
    starts = keys.starts
    cuts: list[int] = []
    bounds = [c for c in starts if a < c < b]
    edges = [a, *bounds, b]
    anchor = budget // ANCHOR_FRACTION
    fixed: set[int] = set()
    for lo, hi in pairwise(edges):
        size = lines.tokens(lo, hi)
        if size > budget:
            # lines inside a statement that fits the budget whole never end up apart: only
            # the lines of a statement too big for one chunk get cuts of their own
            cuts.extend(range(lo + 1, hi))
        seg = keys.by_start.get(lo)
        if size >= anchor and seg is not None and seg.definition:
            fixed.add(hi)
    cuts.extend(c for c in bounds if c not in fixed)
    cuts.sort(key=keys)
    active = sorted(set(edges) | set(cuts))
    prev = dict(pairwise(active[::-1]))
    succ = dict(pairwise(active))
    for c in cuts:
        lo, hi = prev[c], succ[c]
        if lines.tokens(lo, hi) <= budget:
            succ[lo], prev[hi] = hi, lo
            del succ[c], prev[c]
    out: list[tuple[int, int]] = []
    c = a
    while c < b:
        out.append((c, succ[c]))
        c = succ[c]
    return out


def _trim(lines: _Lines, a: int, b: int) -> tuple[int, int]:
    """Drop blank lines at both ends of [a, b) (keeps at least one line)."""
    while a < b - 1 and not lines.line(a).strip():
        a += 1
    while b > a + 1 and not lines.line(b - 1).strip():
        b -= 1
    return a, b


def _symbols_in(lines: _Lines, a: int, b: int, segments: list[_Segment], keys: _CutKeys, generic: bool) -> list[str]:
    """The symbols a chunk of lines [a, b) covers: its segments', or (generic) its top-level lines'."""
    if not generic:
        firsts = [seg.start for seg in segments]
        k = max(bisect_right(firsts, a) - 1, 0)
        names: list[str] = []
        while k < len(segments) and segments[k].start < b:
            if segments[k].symbol not in names:
                names.append(segments[k].symbol)
            k += 1
        return names
    names = [_symbol_of(lines.line(a))]
    for c in range(a + 1, b):
        if keys.score(c) >= 2:
            name = _symbol_of(lines.line(c))
            if name not in names:
                names.append(name)
    return names


_HEADING_RE = re.compile(r"^(?:#{1,6}[ \t]|```|~~~)", re.MULTILINE)


def _markdown_sections(lines: _Lines) -> list[_Segment]:
    """Markdown split at headings outside code fences: a section that fits is never cut."""
    starts = [0]
    fenced = False
    for match in _HEADING_RE.finditer(lines.text):
        if match.group(0).startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced:
            line = bisect_right(lines.starts, match.start()) - 1
            if line > starts[-1]:
                starts.append(line)
    return [_Segment(a, b, "", definition=True) for a, b in pairwise([*starts, lines.count])]


def _symbol_name(symbols: list[str]) -> str:
    names = [s for s in symbols if s]
    if len(names) > MAX_SYMBOLS_IN_NAME:
        names = [*names[:MAX_SYMBOLS_IN_NAME], "..."]
    return ", ".join(names)


def _split_line_by_tokens(
    lines: _Lines, line: int, encoding: Encoding, step: int, limit: int, count: CountFn, symbol: str
) -> list[ChunkSpan]:
    """Cut one over-long line at token boundaries; each piece is re-encoded and checked."""
    start_char, end_char = lines.starts[line], lines.starts[line + 1]
    t0, t1 = lines.tok[line], lines.tok[line + 1]
    cuts = [start_char]
    for t in range(t0 + step, t1, step):
        chars = encoding.token_to_chars(t)
        if chars is not None and cuts[-1] < chars[0] < end_char:
            cuts.append(chars[0])
    cuts.append(end_char)
    pending: list[tuple[int, int]] = []
    for k in range(len(cuts) - 1):
        s, e = cuts[k], cuts[k + 1]
        if pending and not lines.text[s:e].strip():
            pending[-1] = (pending[-1][0], e)  # no whitespace-only pieces: join the previous one
        else:
            pending.append((s, e))
    pieces: list[tuple[int, int, int]] = []
    while pending:
        counts = count([lines.text[s:e] for s, e in pending])
        retry: list[tuple[int, int]] = []
        for (s, e), n in zip(pending, counts, strict=True):
            if n <= limit or e - s <= 1:
                pieces.append((s, e, n))
            else:
                mid = s + (e - s) // 2
                retry.extend([(s, mid), (mid, e)])
        pending = retry
    pieces.sort()
    return [ChunkSpan(line + 1, line + 1, s, e, symbol, n, True) for s, e, n in pieces if lines.text[s:e].strip()]


def plan_file(
    text: str, language: str, encoding: Encoding, budget: int, count: CountFn, prepared: Prepared | None = None
) -> FilePlan:
    """Plan the chunks of one file from its text and its full-file encoding.

    ``count`` encodes texts exactly (used only for pieces of over-long lines); ``prepared``
    (from :func:`prepare` on the same text and language) saves recomputing line starts and
    the Python lexing.
    """
    total = len(encoding)
    if not text.strip():
        return FilePlan(total, text.count("\n") + (0 if text.endswith("\n") else 1) if text else 0, "", ())
    effective = budget - margin_for(budget)
    starts = prepared.starts if prepared is not None else None
    if total <= effective:
        return _single_chunk_plan(text, language, encoding, starts)
    lines = _line_index(text, encoding, starts)
    n = lines.count
    brace = language in BRACE_LANGUAGES
    segments: list[_Segment] | None = None
    import_ranges: list[tuple[int, int]] = []
    if language == "python":
        segments, import_ranges = _python_plan(lines, effective, prepared)
    if segments is None:
        segments = _markdown_sections(lines) if language == "markdown" else [_Segment(0, n, "")]
        import_ranges = [
            (bisect_right(lines.starts, m.start()) - 1, bisect_right(lines.starts, m.start()))
            for m in _IMPORT_RE.finditer(text[: min(len(text), 20000)])
        ]
    # content-defined cuts (syntax first), then trim blank edges and split giant lines by tokens
    generic = language != "python"
    keys = _CutKeys(lines, segments, brace)
    chunks: list[ChunkSpan] = []
    for a, b in sorted(_split(lines, 0, n, effective, keys)):
        a, b = _trim(lines, a, b)
        symbol = _symbol_name(_symbols_in(lines, a, b, segments, keys, generic))
        if b - a == 1 and lines.tokens(a, b) > effective:
            chunks.extend(_split_line_by_tokens(lines, a, encoding, effective, budget, count, symbol))
            continue
        if not lines.text[lines.starts[a] : lines.starts[b]].strip():
            continue
        chunks.append(ChunkSpan(a + 1, b, lines.starts[a], lines.starts[b], symbol, lines.tokens(a, b)))
    return FilePlan(total, n, _imports_text(lines, import_ranges), tuple(chunks))


def _single_chunk_plan(text: str, language: str, encoding: Encoding, starts: list[int] | None = None) -> FilePlan:
    """A file that fits the budget whole: one chunk, no per-line token positions needed."""
    total = len(encoding)
    if starts is None:
        starts = _line_starts(text)
    n = len(starts) - 1
    first = 0
    while first < n - 1 and not text[starts[first] : starts[first + 1]].strip():
        first += 1
    last = n
    while last > first + 1 and not text[starts[last - 1] : starts[last]].strip():
        last -= 1
    if language == "python":
        symbol = _symbol_name(_PY_TOP_RE.findall(text))
        import_lines = [m.start() for m in _PY_IMPORT_RE.finditer(text)]
    else:
        symbol = _symbol_of(text[starts[first] : starts[first + 1]])
        import_lines = [m.start() for m in _IMPORT_RE.finditer(text[:20000])]
    imports: list[str] = []
    used = 0
    for pos in import_lines:  # the file is small (within budget): char_to_token scans are cheap
        end = text.find("\n", pos)
        end = len(text) if end == -1 else end + 1
        first_token = encoding.char_to_token(pos)
        last_token = encoding.char_to_token(end) if end < len(text) else total
        cost = (last_token or total) - (first_token or 0)
        if used + cost > IMPORTS_MAX_TOKENS:
            break
        used += cost
        imports.append(text[pos:end].rstrip("\n"))
    chunk = ChunkSpan(first + 1, last, starts[first], starts[last], symbol, total)
    return FilePlan(total, n, "\n".join(imports), (chunk,))


def _imports_text(lines: _Lines, ranges: list[tuple[int, int]]) -> str:
    """The file's import lines, cut to ``IMPORTS_MAX_TOKENS`` (estimated from line tokens)."""
    parts: list[str] = []
    used = 0
    seen: set[int] = set()
    for a, b in ranges:
        if a in seen or a < 0 or b > lines.count:
            continue
        seen.add(a)
        cost = lines.tokens(a, b)
        if used + cost > IMPORTS_MAX_TOKENS:
            break
        used += cost
        parts.append(lines.text[lines.starts[a] : lines.starts[b]].rstrip("\n"))
    return "\n".join(parts)
