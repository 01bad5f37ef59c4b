"""The table contract: each table's row class matches its Arrow schema, every asset declares the
contract's schema, and a ``code_chunks`` partition written with the older int32 line numbers
still loads beside new ones."""

from __future__ import annotations

import types
import typing
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pytest

from cicdllm_assets.generation.chunks import select_chunks
from cicdllm_assets.quality.pairs import filter_pairs
from cicdllm_assets.storage.contract import CODE_CHUNKS_SCHEMA, TABLES
from cicdllm_assets.storage.tables import TableStore
from tests.generation_support import SAMPLE_FILES, chunk_rows

_PYTHON_TYPES = {str: pa.types.is_string, int: pa.types.is_integer, float: pa.types.is_floating}
_PYTHON_TYPES |= {bool: pa.types.is_boolean, datetime: pa.types.is_timestamp}


def _split_optional(annotation: object) -> tuple[object, bool]:
    if isinstance(annotation, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        assert len(args) == 1, annotation
        return args[0], True
    return annotation, False


@pytest.mark.parametrize("name", sorted(TABLES))
def test_row_class_matches_the_schema(name: str) -> None:
    schema, row = TABLES[name]
    hints = typing.get_type_hints(row)
    assert list(hints) == schema.names  # the same columns in the same order
    for field in schema:
        python_type, optional = _split_optional(hints[field.name])
        assert _PYTHON_TYPES[python_type](field.type), (name, field.name, python_type, field.type)  # type: ignore[index]
        assert field.nullable or not optional, f"{name}.{field.name} is not nullable but typed optional"


def test_line_numbers_are_int64_in_every_table() -> None:
    for name, (schema, _) in TABLES.items():
        for column in ("start_line", "end_line"):
            if column in schema.names:
                assert schema.field(column).type == pa.int64(), (name, column)


def test_every_asset_declares_the_contract_schema() -> None:
    import dagster as dg

    from cicdllm_assets.assets._conventions import COLUMN_SCHEMA, column_schema
    from cicdllm_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    for name, (schema, _) in TABLES.items():
        assert graph.get(dg.AssetKey(name)).metadata[COLUMN_SCHEMA] == column_schema(schema), name


def _old_code_chunks(rows: list[dict[str, typing.Any]]) -> pa.Table:
    """A code_chunks table as the previous version wrote it (int32 line numbers)."""
    schema = CODE_CHUNKS_SCHEMA
    for column in ("start_line", "end_line"):
        index = schema.get_field_index(column)
        schema = schema.set(index, schema.field(column).with_type(pa.int32()))
    full = [{"blob_sha": "b", "token_count": 1, "redactions": 0, "chunk_index": i, **r} for i, r in enumerate(rows)]
    return pa.Table.from_pylist(full, schema=schema)


def test_an_int32_code_chunks_partition_still_loads_beside_new_ones(tmp_path: Path) -> None:
    store = TableStore(tmp_path)
    old_rows = chunk_rows("old", SAMPLE_FILES)
    store.write("code_chunks", "old", _old_code_chunks(old_rows))
    new = pa.Table.from_pylist(
        [
            {"blob_sha": "b", "token_count": 1, "redactions": 0, "chunk_index": i, **r}
            for i, r in enumerate(chunk_rows("new", SAMPLE_FILES))
        ],
        schema=CODE_CHUNKS_SCHEMA,
    )
    store.write("code_chunks", "new", new)

    old = store.read("code_chunks", "old")
    assert old is not None and old.schema.field("start_line").type == pa.int32()
    chunks = select_chunks(old.to_pylist(), None)  # the generation stages read it as before
    assert [(c.path, c.start_line, c.end_line) for c in chunks] == sorted(
        (r["path"], r["start_line"], r["end_line"]) for r in old_rows
    )
    assert all(type(c.start_line) is int for c in chunks)

    both = store.read_all("code_chunks")  # the IO manager's load of several partitions
    assert both is not None and both.schema.field("start_line").type == pa.int64()
    assert both.num_rows == old.num_rows + new.num_rows

    con = store.connect(["code_chunks"])  # the DuckDB views (status, export) read both files
    total = con.execute("SELECT sum(start_line), count(*) FROM code_chunks").fetchone()
    assert total == (2 * sum(r["start_line"] for r in old_rows), both.num_rows)

    answers = pa.Table.from_pylist(
        [{"answer_id": "a", "question": "What does it do?", "answer": "", "chunk_key": old_rows[0]["chunk_key"]}]
    )
    (verdict,) = filter_pairs(answers, old, 0.9).table.column("reject_reason").to_pylist()
    assert verdict != "missing_chunk"  # the old chunk was found by its key
