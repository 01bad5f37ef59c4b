"""Bounded chunk selection (``max_chunks_per_repo``) and the module-level symbol placeholder."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from cicdllm_assets.generation.chunks import Chunk, chunks_from_table


def _row(path: str, start: int, symbol: str, tokens: int = 120) -> dict[str, Any]:
    return {
        "repo": "r",
        "chunk_key": f"{path}:{start}",
        "path": path,
        "start_line": start,
        "end_line": start + 9,
        "text": f"code {path} {start}\n",
        "language": "python",
        "symbol": symbol,
        "token_count": tokens,
    }


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows)


def _rows() -> list[dict[str, Any]]:
    rows = []
    for f in range(6):
        path = f"pkg/m{f}.py"
        rows.append(_row(path, 1, ""))  # module-level: imports, constants
        rows.append(_row(path, 11, f"func_{f}"))
        rows.append(_row(path, 21, f"a_{f}, b_{f}"))  # several small symbols merged
        rows.append(_row(path, 31, f"Tiny{f}", tokens=10))
    return rows


def test_without_limit_every_chunk_in_path_order() -> None:
    chunks = chunks_from_table(_table(_rows()), "r", None)
    assert len(chunks) == 24
    assert [(c.path, c.start_line) for c in chunks] == sorted((c.path, c.start_line) for c in chunks)


def test_limit_prefers_single_named_symbols_of_useful_size() -> None:
    chunks = chunks_from_table(_table(_rows()), "r", 4)
    assert len(chunks) == 4
    assert all(c.symbol.startswith("func_") for c in chunks)
    assert len({c.path for c in chunks}) == 4  # one chunk per file here: spread, not the first file
    assert [(c.path, c.start_line) for c in chunks] == sorted((c.path, c.start_line) for c in chunks)


def test_limit_falls_back_to_other_tiers_in_order() -> None:
    chunks = chunks_from_table(_table(_rows()), "r", 20)
    symbols = [c.symbol for c in chunks]
    assert sum(s.startswith("func_") for s in symbols) == 6
    assert sum("," in s for s in symbols) + sum(s.startswith("Tiny") for s in symbols) == 12
    assert symbols.count("") == 2  # module-level chunks come last


def test_selection_is_deterministic_and_stable_when_a_file_is_added() -> None:
    rows = _rows()
    first = chunks_from_table(_table(rows), "r", 3)
    assert first == chunks_from_table(_table(list(reversed(rows))), "r", 3)
    extra = [_row("pkg/new.py", 11, "new_func")]
    after = {c.chunk_key for c in chunks_from_table(_table(rows + extra), "r", 3)}
    before = {c.chunk_key for c in first}
    # The new chunk may take one slot; the others keep theirs.
    assert len(before & after) >= 2


def test_module_level_placeholder_names_the_file() -> None:
    chunk = Chunk.from_row(_row("pkg/loader.py", 1, ""))
    assert chunk.placeholder_values()["symbol"] == "the top-level code of loader.py"
    named = Chunk.from_row(_row("pkg/loader.py", 11, "load"))
    assert named.placeholder_values()["symbol"] == "load"
