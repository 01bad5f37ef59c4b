"""Symbols a chunk defines and uses, the repository's definitions, and repo-wide context.

* :func:`chunk_symbols`: what one chunk defines (functions, classes, assignments) and uses
  (called names first, then base classes, annotations and other names), its parameters and
  the exceptions it raises. Python chunks go through :mod:`ast` (dedented, so methods parse);
  other languages, and Python fragments that do not parse, through regular expressions.
* :class:`RepoIndex`: every definition in a repository's chunks (name -> signature and the
  first docstring line, or the definition's first line), built from ``code_chunks``.
* :func:`repo_context`: for an answer prompt, the signatures and docstrings of the repo symbols
  a chunk uses but does not define, in the order it uses them, within a token budget counted
  with the backend's own tokenizer; and every file they come from (provenance).
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import re
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from cicdllm_assets.quality.grounding import defined_names

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CALL = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_RAISE = re.compile(r"\b(?:raise|throw)\s+(?:new\s+)?([A-Za-z_][A-Za-z0-9_.]*)")
_DEF_LINE = re.compile(
    r"^\s*(?:export\s+)?(?:pub\s+)?(?:async\s+)?(?:def|class|function|func|fn|struct|enum|interface|trait|type)\s+"
    r"(?:\([^)]*\)\s*)?([A-Za-z_][A-Za-z0-9_]*)",
    re.MULTILINE,
)
_FROM_IMPORT = re.compile(r"^\s*from\s+[\w.]+\s+import\s+(.+)$", re.MULTILINE)
_BUILTINS = frozenset(dir(builtins)) | {"self", "cls"}
MAX_DEFINITIONS_PER_NAME = 2
"""A used name defined in more places than this is too ambiguous to show (``get``, ``run``)."""
MAX_CANDIDATES = 24
REPO_CONTEXT_HEADER = "Definitions from other parts of the repository that this code uses:"


@dataclass(frozen=True)
class ChunkSymbols:
    """What a chunk defines and uses (names in first-use order)."""

    defines: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    raises: tuple[str, ...] = ()
    calls: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    """Names called as attributes (``obj.name()``): they resolve to methods only."""


@dataclass(frozen=True)
class Definition:
    """One definition in the repository: where, its signature, and its first docstring line."""

    name: str
    path: str
    signature: str
    doc: str = ""
    method: bool = False

    def line(self) -> str:
        """The definition as one prompt line."""
        doc = f" - {self.doc}" if self.doc else ""
        return f"- {self.path}: {self.signature}{doc}"


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for n in names if n))


def _parse(text: str) -> ast.Module | None:
    try:
        return ast.parse(textwrap.dedent(text))
    except (SyntaxError, ValueError):
        return None


def _name(node: ast.expr) -> str:
    return node.id if isinstance(node, ast.Name) else ""


def _called_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _python_symbols(tree: ast.Module) -> ChunkSymbols:
    defines: list[str] = []
    calls: list[str] = []
    methods: list[str] = []
    bases: list[str] = []
    names: list[str] = []
    params: list[str] = []
    raises: list[str] = []
    nodes = sorted(ast.walk(tree), key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0)))
    for node in nodes:  # in source order
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defines.append(node.name)
            if isinstance(node, ast.ClassDef):
                bases.extend(_name(base) for base in node.bases)
            else:
                args = node.args
                params.extend(a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs))
                params.extend(a.arg for a in (args.vararg, args.kwarg) if a is not None)
        elif isinstance(node, ast.Call):
            calls.append(_called_name(node.func))
            if isinstance(node.func, ast.Attribute):
                methods.append(node.func.attr)
        elif isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            raises.append(_called_name(exc))
        elif isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Store):
                defines.append(node.id)
            else:
                names.append(node.id)
    own = set(defines) | set(params) | _BUILTINS
    params_out = [p for p in params if p not in ("self", "cls")]
    direct = [_name(node.func) for node in nodes if isinstance(node, ast.Call)]
    uses = [n for n in (*direct, *bases, *names) if n not in own]
    return ChunkSymbols(
        _unique(defines),
        _unique(uses),
        _unique(params_out),
        _unique(raises),
        _unique(c for c in calls if c),
        _unique(m for m in methods if m not in own),
    )


def _regex_symbols(text: str) -> ChunkSymbols:
    defines = defined_names(text)
    calls = [name for name in _CALL.findall(text) if name not in _BUILTINS]
    uses = [name for name in calls if name not in defines]
    raises = [name.rsplit(".", 1)[-1] for name in _RAISE.findall(text)]
    return ChunkSymbols(_unique(sorted(defines)), _unique(uses), (), _unique(raises), _unique(calls))


@lru_cache(maxsize=4096)
def chunk_symbols(text: str, language: str = "python") -> ChunkSymbols:
    """The symbols ``text`` (one chunk) defines and uses (see module doc)."""
    if language.lower() == "python":
        tree = _parse(text)
        if tree is not None:
            return _python_symbols(tree)
    return _regex_symbols(text)


def _first_line(doc: str | None) -> str:
    for line in (doc or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _python_definitions(tree: ast.Module, path: str, methods: bool) -> list[Definition]:
    found: list[Definition] = []
    in_class = {id(child) for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for child in node.body}
    if methods:  # the chunk is a method cut out of its class: its top-level functions are methods
        in_class |= {id(node) for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
            returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
            signature = f"{prefix} {node.name}({ast.unparse(node.args)}){returns}"
        elif isinstance(node, ast.ClassDef):
            bases = ", ".join(ast.unparse(b) for b in node.bases)
            signature = f"class {node.name}({bases})" if bases else f"class {node.name}"
        else:
            continue
        doc = _first_line(ast.get_docstring(node))
        found.append(Definition(node.name, path, signature, doc, id(node) in in_class))
    return found


def definitions(text: str, path: str, language: str = "python", symbol: str = "") -> list[Definition]:
    """The functions and classes ``text`` (one chunk of ``path``, named ``symbol``) defines."""
    if language.lower() == "python":
        tree = _parse(text)
        if tree is not None:
            return _python_definitions(tree, path, "." in symbol)
    return [Definition(m.group(1), path, m.group(0).strip()) for m in _DEF_LINE.finditer(text)]


@dataclass(frozen=True)
class RepoIndex:
    """Definitions by name over a repository's chunks."""

    by_name: dict[str, tuple[Definition, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, chunks: Iterable[tuple[str, str, str, str]]) -> RepoIndex:
        """From ``(path, language, symbol, text)`` of every chunk (sorted: the index is deterministic)."""
        by_name: dict[str, list[Definition]] = {}
        for path, language, symbol, text in sorted(chunks):
            for definition in definitions(text, path, language, symbol):
                entries = by_name.setdefault(definition.name, [])
                if definition not in entries:
                    entries.append(definition)
        return cls({name: tuple(defs) for name, defs in by_name.items()})


@dataclass(frozen=True)
class RepoContext:
    """The repo-wide context of an answer prompt: its text, the files it drew on, its tokens."""

    text: str = ""
    files: tuple[str, ...] = ()
    tokens: int = 0
    names: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        """Part of the answer item's key: what the prompt shows (empty context: "")."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16] if self.text else ""


def imported_names(imports: str) -> list[str]:
    """The names ``from x import a, b as c`` lines bind (``a``, ``b``): module paths are not symbols."""
    names: list[str] = []
    for match in _FROM_IMPORT.finditer(imports):
        for part in match.group(1).replace("(", " ").replace(")", " ").split(","):
            words = part.split()
            if words:
                names.append(words[0])
    return names


def _candidates(symbols: ChunkSymbols, imports: str, index: RepoIndex) -> list[Definition]:
    """Definitions of names the chunk uses: functions and classes by name (calls, bases, other
    names, then used imports), methods by the attribute names it calls."""
    own = set(symbols.defines)
    wanted = [(n, False) for n in (*symbols.uses, *imported_names(imports))] + [(n, True) for n in symbols.methods]
    out: list[Definition] = []
    for name, method in dict.fromkeys(wanted):
        if name in own:
            continue
        defs = [d for d in index.by_name.get(name, ()) if d.method == method]
        if 0 < len(defs) <= (1 if method else MAX_DEFINITIONS_PER_NAME):  # methods match by name only
            out.extend(defs)
        if len(out) >= MAX_CANDIDATES:
            break
    return out[:MAX_CANDIDATES]


def repo_context(
    text: str,
    language: str,
    imports: str,
    index: RepoIndex,
    budget: int,
    count_tokens: Callable[[str], int],
    redact: Callable[[str], str] = lambda s: s,
) -> RepoContext:
    """Signatures and docstrings of the repo symbols the chunk uses but does not define, in
    use order, as many as fit ``budget`` tokens (the whole block, header included, counted
    with ``count_tokens``); entries that do not fit are skipped. ``redact`` cleans each entry
    (the chunks are redacted already; this keeps the guarantee local)."""
    if budget <= 0:
        return RepoContext()
    lines: list[str] = []
    files: list[str] = []
    names: list[str] = []
    tokens = 0
    for definition in _candidates(chunk_symbols(text, language), imports, index):
        line = redact(definition.line())
        candidate = "\n".join([REPO_CONTEXT_HEADER, *lines, line])
        count = count_tokens(candidate)
        if count > budget:
            continue
        lines.append(line)
        files.append(definition.path)
        names.append(definition.name)
        tokens = count
    if not lines:
        return RepoContext()
    return RepoContext("\n".join([REPO_CONTEXT_HEADER, *lines]), _unique(files), tokens, tuple(names))


def context_files(chunk_path: str, context: RepoContext) -> list[str]:
    """Every file an answer prompt drew on: the chunk's own file first, then the context's."""
    return list(_unique([chunk_path, *context.files]))
