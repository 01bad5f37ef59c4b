"""The light Python lexer finds the same top-level defs and classes as ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cicdllm_assets.chunking.plan import _line_starts
from cicdllm_assets.chunking.pylex import PyLexer

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(ast.__file__).parent  # the stdlib: a large, varied corpus that is always present


def top_level_defs(text: str) -> list[tuple[int, str]]:
    module = ast.parse(text)
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [(node.lineno - 1, node.name) for node in module.body if isinstance(node, kinds)]


def lexed_defs(text: str) -> list[tuple[int, str]]:
    starts = _line_starts(text)
    statements = PyLexer(text, starts).statements(0, len(starts) - 1, "")
    return [(s.def_line, s.name) for s in statements if s.kind in ("def", "class")]


@pytest.mark.parametrize("corpus", ["project", "stdlib"])
def test_lexer_matches_ast(corpus: str) -> None:
    project = sorted((ROOT / "cicdllm_assets").rglob("*.py"))
    paths = project if corpus == "project" else sorted(SITE.glob("*.py"))[:120]
    checked = 0
    for path in paths:
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            expected = top_level_defs(text)
        except SyntaxError:
            continue
        assert lexed_defs(text) == expected, path
        checked += 1
    assert checked > 20


def test_strings_comments_decorators_and_continuations() -> None:
    text = (
        "import os\n"
        "X = '''\n"
        "def not_a_function():\n"
        "    pass\n"
        "'''\n"
        "# comment about f\n"
        "@decorator(\n"
        "    arg=1,\n"
        ")\n"
        "def f():\n"
        '    s = "def inner(): # not a comment"\n'
        "    return s\n"
        "if X:\n"
        "    pass\n"
        "else:\n"
        "    pass\n"
        "class C(\n"
        "    Base,\n"
        "):\n"
        "    def m(self):\n"
        "        return 1\n"
    )
    starts = _line_starts(text)
    lexer = PyLexer(text, starts)
    statements = lexer.statements(0, len(starts) - 1, "")
    assert [(s.line, s.kind, s.name) for s in statements] == [
        (0, "import", ""),
        (1, "other", ""),
        (5, "def", "f"),
        (12, "other", ""),
        (16, "class", "C"),
    ]
    body = lexer.body_indent(16, len(starts) - 1)
    assert body == (19, "    ")
    members = lexer.statements(19, len(starts) - 1, "    ")
    assert [(s.line, s.name) for s in members] == [(19, "m")]
