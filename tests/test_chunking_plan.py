"""Chunk planning: syntax boundaries, symbols, imports, and every chunk within budget (real tokenizer)."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from cicdllm_assets.chunking.plan import IMPORTS_MAX_TOKENS, FilePlan, margin_for, plan_file
from cicdllm_assets.llm.tokenizer_counter import TokenCounter
from tests.discovery_helpers import train_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def counter(tmp_path_factory: pytest.TempPathFactory) -> TokenCounter:
    return TokenCounter(train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json"))


def plan(counter: TokenCounter, text: str, language: str, budget: int) -> FilePlan:
    return plan_file(text, language, counter.encode_batch([text])[0], budget, counter.count_batch)


def assert_within_budget(counter: TokenCounter, text: str, result: FilePlan, budget: int) -> None:
    """Every chunk fits when tokenized on its own, and no non-blank line is lost."""
    texts = [text[c.start_char : c.end_char] for c in result.chunks]
    real = counter.count_batch(texts)
    assert max(real) <= budget, max(real)
    # counts derived from the file's single encoding are within a couple of tokens of the real ones
    deltas = [r - c.token_count for r, c in zip(real, result.chunks, strict=True)]
    assert all(-2 <= d <= 2 for d in deltas), deltas
    lines = text.split("\n")
    covered: set[int] = set()
    for chunk in result.chunks:
        covered.update(range(chunk.start_line, chunk.end_line + 1))
        assert text[chunk.start_char : chunk.end_char].strip()
    missing = [i + 1 for i, line in enumerate(lines) if line.strip() and i + 1 not in covered]
    assert not missing
    spans = [(c.start_char, c.end_char) for c in result.chunks]
    assert spans == sorted(spans) and all(a[1] <= b[0] for a, b in pairwise(spans))


def test_5000_line_function_is_split_by_lines_within_budget(counter: TokenCounter) -> None:
    body = "".join(f"    value_{i} = compute(value_{i - 1}, {i}) + total_count\n" for i in range(1, 5001))
    text = f"import os\n\n\ndef enormous(value_0):\n{body}    return value_5000\n"
    budget = 128
    result = plan(counter, text, "python", budget)
    assert len(result.chunks) > 100
    assert_within_budget(counter, text, result, budget)
    assert result.chunks[0].symbol in {"", "enormous"}
    assert {c.symbol for c in result.chunks[1:]} == {"enormous"}
    assert result.chunks[-1].end_line == text.count("\n")
    # no needless small pieces: any two neighbouring chunks together exceed the budget (a cut
    # is only kept when the ranges it separates do not fit together)
    effective = budget - margin_for(budget)
    assert all(a.token_count + b.token_count > effective - 2 for a, b in pairwise(result.chunks))


@pytest.mark.parametrize("language", ["python", "text", "javascript"])
def test_giant_line_is_split_by_tokens_within_budget(counter: TokenCounter, language: str) -> None:
    giant = "data = '" + "".join(f"{i:x}é" for i in range(6000)) + "'\n"
    text = "x = 1\n\n" + giant + "y = 2\n"
    budget = 64
    result = plan(counter, text, language, budget)
    assert_within_budget(counter, text, result, budget)
    partial = [c for c in result.chunks if c.partial]
    assert len(partial) > 10 and all(c.start_line == c.end_line == 3 for c in partial)
    assert "".join(text[c.start_char : c.end_char] for c in partial) == giant


def test_python_structure_symbols_and_imports(counter: TokenCounter) -> None:
    methods = "".join(
        f"    def method_{i}(self, other):\n        total = self.value + other * {i}\n        return total\n\n"
        for i in range(12)
    )
    text = (
        '"""Module doc."""\n\nimport os\nimport sys\nfrom pathlib import Path\n\nCONSTANT = 1\n\n\n'
        "def small_one():\n    return 1\n\n\ndef small_two():\n    return 2\n\n\n"
        f'class Big:\n    """A big class."""\n\n{methods}'
        "\nif __name__ == '__main__':\n    small_one()\n"
    )
    budget = 96
    result = plan(counter, text, "python", budget)
    assert_within_budget(counter, text, result, budget)
    symbols = [c.symbol for c in result.chunks]
    assert any(", " in s for s in symbols)  # small neighbours merged
    # every cut is at a statement boundary: a top-level statement or a method of the big class
    for chunk in result.chunks[1:]:
        assert text[chunk.start_char :].startswith(("def ", "class ", "    def ", "if __name__")), chunk
    assert any(s.startswith("Big.method_") for s in symbols)  # methods of a class too big for one chunk
    assert "import os" in result.imports and "from pathlib import Path" in result.imports
    assert counter.count_batch([result.imports])[0] <= IMPORTS_MAX_TOKENS + 4
    assert result.line_count == text.count("\n")
    assert result.token_count == counter.count(text)


def test_small_file_is_one_chunk(counter: TokenCounter) -> None:
    text = "def f():\n    return 1\n"
    result = plan(counter, text, "python", 512)
    assert len(result.chunks) == 1
    chunk = result.chunks[0]
    assert (chunk.start_line, chunk.end_line, chunk.symbol) == (1, 2, "f")


def test_syntax_error_falls_back_to_generic(counter: TokenCounter) -> None:
    text = "def broken(:\n" + "    x = 1\n" * 200
    result = plan(counter, text, "python", 64)
    assert_within_budget(counter, text, result, 64)


def test_brace_language_splits_at_function_boundaries(counter: TokenCounter) -> None:
    funcs = "".join(
        f'func Handler{i}(w http.ResponseWriter, r *http.Request) {{\n\tfmt.Println("value", {i})\n\treturn\n}}\n\n'
        for i in range(30)
    )
    text = 'package main\n\nimport "fmt"\n\n' + funcs
    budget = 80
    result = plan(counter, text, "go", budget)
    assert_within_budget(counter, text, result, budget)
    assert 'import "fmt"' in result.imports
    # cuts land between functions: every chunk after the first starts at a func line
    for chunk in result.chunks[1:]:
        assert text[chunk.start_char :].startswith("func Handler")
    assert all(c.symbol.startswith("Handler") for c in result.chunks[1:])


def test_empty_and_whitespace_files(counter: TokenCounter) -> None:
    assert plan(counter, "", "python", 64).chunks == ()
    assert plan(counter, "\n\n   \n", "text", 64).chunks == ()


@pytest.mark.parametrize("budget", [32, 64, 200])
def test_every_chunk_of_this_project_fits(counter: TokenCounter, budget: int) -> None:
    """A broad proof on real code: all of this project's Python and Markdown files."""
    paths = sorted((REPO_ROOT / "cicdllm_assets").rglob("*.py"))[:60] + sorted(REPO_ROOT.glob("*.md"))
    texts = [p.read_text(encoding="utf-8") for p in paths]
    encodings = counter.encode_batch(texts)
    for path, text, encoding in zip(paths, texts, encodings, strict=True):
        if not text.strip():
            continue
        language = "python" if path.suffix == ".py" else "markdown"
        result = plan_file(text, language, encoding, budget, counter.count_batch)
        assert_within_budget(counter, text, result, budget)


def _chunk_texts(counter: TokenCounter, text: str, language: str, budget: int) -> list[str]:
    return [text[c.start_char : c.end_char] for c in plan(counter, text, language, budget).chunks]


PY_FUNCS = [
    f"def handler_{i}(request, limit={i}):\n"
    + "".join(f"    step_{k} = request.get('field_{k}', {i * k}) or limit\n" for k in range(i * 7 % 11 + 1))
    + "    return request\n\n\n"
    for i in range(80)
]
GO_FUNCS = [
    f"func Handler{i}(w http.ResponseWriter, r *http.Request) {{\n"
    + "".join(f'\tfmt.Println("value", {i}, {k})\n' for k in range(i * 7 % 11 + 1))
    + "}\n\n"
    for i in range(80)
]


def _lines(texts: list[str]) -> list[str]:
    return [line for text in texts for line in text.split("\n") if line.strip()]


def _holds(chunk: str, func: str) -> bool:
    return chunk.rstrip("\n") in func or func.split("\n")[0] in chunk


@pytest.mark.parametrize(
    ("language", "head", "funcs"),
    [
        ("python", "import os\n\n\n", PY_FUNCS),
        ("go", 'package main\n\nimport "fmt"\n\n', GO_FUNCS),
    ],
)
def test_an_edit_moves_no_neighbouring_cut(counter: TokenCounter, language: str, head: str, funcs: list[str]) -> None:
    """Cuts are content-defined: growing one function, or inserting lines above everything,
    changes only the chunks around the edit, never the cuts further away."""
    budget = 256
    text = head + "".join(funcs)
    before = _chunk_texts(counter, text, language, budget)
    assert len(before) > 10
    for k, added in ((7, 1), (31, 6), (52, 2), (12, 3), (40, 8), (66, 4), (3, 5)):
        edited = list(funcs)
        grow = ("    extra = 1\n" if language == "python" else '\tfmt.Println("extra")\n') * added
        lines = edited[k].split("\n")
        edited[k] = "\n".join([lines[0], grow.rstrip("\n"), *lines[1:]])
        after = _chunk_texts(counter, head + "".join(edited), language, budget)
        # only the chunks that held the edited function, and at most one neighbour on each
        # side (which may trade a function with them), change; the rest keep their cuts
        new = [t for t in after if t not in before]
        gone = [i for i, t in enumerate(before) if t not in after]
        held = [i for i, t in enumerate(before) if _holds(t, funcs[k])]
        assert gone and min(held) - 1 <= min(gone) and max(gone) <= max(held) + 1, (k, held, gone)
        assert len(new) <= len(gone) + 1
        assert sorted(_lines(new)) == sorted(_lines([before[i] for i in gone]) + _lines([grow])), k
    shifted = _chunk_texts(
        counter, head.replace("\n\n", "\n# a comment\n# another one\n\n", 1) + "".join(funcs), language, budget
    )
    # the first chunk holds the new lines (its neighbour may trade a function with it)
    assert [i for i, t in enumerate(before) if t not in shifted] in ([0], [0, 1])


BIG_FUNCS = [
    f"def worker_{i}(request):\n"
    + "".join(f"    value_{k} = request.get('field_{k}', {i * k})\n" for k in range(8 + i % 3))
    + "    return request\n\n\n"
    for i in range(40)
]


def test_a_big_definition_never_repacks_its_neighbours(counter: TokenCounter) -> None:
    """A definition of at least a quarter of the budget shares a chunk with no other
    definition: growing it, even past the budget, leaves every other chunk as it was."""
    sizes = counter.count_batch(BIG_FUNCS)
    budget = next(b for b in range(64, 4096) if b - margin_for(b) >= 2.2 * max(sizes))
    assert min(sizes) >= (budget - margin_for(budget)) // 3  # each function is "big"...
    assert 2 * max(sizes) < budget - margin_for(budget)  # ...yet any two would fit one chunk
    head = "import os\n\n\n"
    before = _chunk_texts(counter, head + "".join(BIG_FUNCS), "python", budget)
    # each function is its own chunk (the imports go with the first)
    assert before == [head + BIG_FUNCS[0].rstrip("\n") + "\n", *(f.rstrip("\n") + "\n" for f in BIG_FUNCS[1:])]
    for k, added in ((5, 1), (17, 8), (30, 100)):
        edited = list(BIG_FUNCS)
        lines = edited[k].split("\n")
        edited[k] = "\n".join([lines[0], *["    extra = 1"] * added, *lines[1:]])
        after = _chunk_texts(counter, head + "".join(edited), "python", budget)
        assert [t for t in before if not _holds(t, BIG_FUNCS[k])] == [t for t in after if not _holds(t, edited[k])]
        assert len(after) > len(before) if added == 100 else len(after) == len(before)  # 100 lines: past the budget
