"""The table contract: each table's row class matches its Arrow schema, every asset declares the
contract's schema, and a ``code_chunks`` partition written with the older int32 line numbers
still loads beside new ones."""

from __future__ import annotations

import typing
from pathlib import Path

import pyarrow as pa
import pytest

from cicdllm_assets.generation.chunks import select_chunks
from cicdllm_assets.quality.pairs import filter_pairs
from cicdllm_assets.storage.contract import (
    CODE_CHUNKS_SCHEMA,
    EXPORT_SCHEMA,
    JUDGE_FIELDS,
    REPOSITORIES_SCHEMA,
    TABLES,
    arrow_schema,
    split_optional,
)
from cicdllm_assets.storage.tables import TableStore
from tests.generation_support import SAMPLE_FILES, chunk_rows


def test_schemas_follow_the_row_classes() -> None:
    for name, (schema, row) in TABLES.items():
        hints = typing.get_type_hints(row)
        assert list(hints) == schema.names, name  # the same columns in the same order
        for field in schema:
            _, optional = split_optional(hints[field.name])
            assert field.nullable or not optional, f"{name}.{field.name}"
    int32 = {name: [f.name for f in schema if f.type == pa.int32()] for name, (schema, _) in TABLES.items()}
    assert {name: columns for name, columns in int32.items() if columns} == {
        "source_files": ["chunk_count"],
        "code_chunks": ["token_count", "redactions", "chunk_index"],
        "questions": ["question_index"],
    }
    required = {name: [f.name for f in schema if not f.nullable] for name, (schema, _) in TABLES.items()}
    assert required["questions"] == required["answers"] == []  # generated tables: every column nullable
    assert required["qa_pairs"] == ["accepted"]
    assert required["code_chunks"] == [
        *("repo", "commit", "path", "blob_sha", "chunk_key", "start_line", "end_line", "text"),
        *("token_count", "redactions", "chunk_index"),
    ]
    # an export record has every field but the judge's scores (null unless quality.judge scored it)
    judge = [f.name for f in JUDGE_FIELDS]
    assert judge == [name for name in EXPORT_SCHEMA.names if name.startswith("judge_")]
    assert required["training_dataset"] == [name for name in EXPORT_SCHEMA.names if name not in judge]
    assert REPOSITORIES_SCHEMA.field("fetched_at").type == pa.timestamp("us", tz="UTC")


def test_a_column_is_one_type_or_that_type_or_none() -> None:
    class Bad(typing.TypedDict):
        value: int | str

    with pytest.raises(TypeError, match=r"one type or that type \| None"):
        arrow_schema(Bad)


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
