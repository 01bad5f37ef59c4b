"""Builders for answers / code_chunks / repositories tables and a Dagster run of the dataset assets."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from dagster import AssetKey, DagsterInstance, SourceAsset, materialize

from cicdllm_assets.assets._export import export_with_settings
from cicdllm_assets.assets.dataset_checks import (
    no_duplicates,
    no_empty_fields,
    no_secrets,
    schema_valid,
    splits_disjoint_by_file,
)
from cicdllm_assets.assets.qa_pairs import qa_pairs
from cicdllm_assets.assets.training_dataset import training_dataset
from cicdllm_assets.config import Settings
from cicdllm_assets.export.dataset import DatasetResult
from cicdllm_assets.io_managers import PartitionedParquetIOManager
from cicdllm_assets.partitions import repos_partitions
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.storage.tables import TableStore

CHECKS = [schema_valid, no_empty_fields, no_duplicates, no_secrets, splits_disjoint_by_file]


def export_dataset(qa_pairs: pa.Table | Sequence[Path], settings: Settings, **kwargs: Any) -> DatasetResult:
    """The export with the sections and paths of ``settings``, as the asset runs it."""
    return export_with_settings(qa_pairs, settings, **kwargs)


def _id(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


def chunk_row(
    repo: str, path: str, text: str, start: int = 1, license: str = "MIT", imports: str = "", language: str = "python"
) -> dict[str, Any]:
    """One code_chunks row."""
    end = start + text.count("\n")
    return {
        "repo": repo,
        "commit": "c0ffee" + repo[-4:],
        "license": license,
        "path": path,
        "blob_sha": _id("blob", repo, path),
        "language": language,
        "chunk_key": _id(repo, path, start, end),
        "start_line": start,
        "end_line": end,
        "symbol": "",
        "imports": imports,
        "text": text,
        "token_count": len(text.split()),
        "redactions": 0,
    }


def answer_row(
    chunk: dict[str, Any],
    question: str,
    answer: str,
    theme: str = "code_explanation",
    completion_tokens: int = 40,
    max_tokens: int = 256,
) -> dict[str, Any]:
    """One answers row about ``chunk``."""
    return {
        "repo": chunk["repo"],
        "answer_id": _id("a", chunk["chunk_key"], theme, question),
        "question_id": _id("q", chunk["chunk_key"], theme, question),
        "chunk_key": chunk["chunk_key"],
        "theme": theme,
        "template_hash": "tpl" + theme[:4],
        "question_template_hash": "qtpl",
        "question": question,
        "answer": answer,
        "model_id": "tiny-test-model",
        "params": json.dumps({"max_tokens": max_tokens, "temperature": 0.7}),
        "prompt_tokens": 100,
        "cached_prompt_tokens": 0,
        "completion_tokens": completion_tokens,
        "latency_ms": 12.5,
        "trimmed": False,
        "path": chunk["path"],
        "start_line": chunk["start_line"],
        "end_line": chunk["end_line"],
        "commit": chunk["commit"],
        "license": chunk["license"],
        "language": chunk["language"],
    }


def store_repo(
    settings_tables: Path,
    repo: str,
    chunks: Sequence[dict[str, Any]],
    answers: Sequence[dict[str, Any]],
    license: str = "MIT",
) -> None:
    """Write one repo's code_chunks, answers and repositories partitions into the TableStore."""
    store = TableStore(settings_tables)
    store.write("code_chunks", repo, pa.Table.from_pylist(list(chunks)))
    store.write("answers", repo, pa.Table.from_pylist(list(answers)))
    store.write(
        "repositories",
        repo,
        pa.table(
            {
                "repo": [repo],
                "url": [f"file:///{repo}"],
                "license": [license],
                "head_commit": ["c0ffee"],
            }
        ),
    )


def run_dataset_assets(project: Path, repos: Sequence[str], run_training: bool = True) -> DagsterInstance:
    """Materialize qa_pairs for each repo, then training_dataset with its blocking checks."""
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("repos", list(repos))
    resources = {
        "app_config": AppConfigResource(config_path=str(project / "cicdllm.yaml")),
        "io_manager": PartitionedParquetIOManager(config_path=str(project / "cicdllm.yaml")),
    }
    sources = [
        SourceAsset(AssetKey("answers"), partitions_def=repos_partitions),
        SourceAsset(AssetKey("code_chunks"), partitions_def=repos_partitions),
    ]
    for repo in repos:
        result = materialize([qa_pairs, *sources], partition_key=repo, resources=resources, instance=instance)
        assert result.success
    if run_training:
        result = materialize(
            [qa_pairs, training_dataset, *CHECKS, *sources],
            selection=[training_dataset],
            resources=resources,
            instance=instance,
        )
        assert result.success
    return instance


def assert_table_metadata(
    instance: DagsterInstance,
    tables_dir: Path,
    export_dir: Path,
    partitioned: Sequence[str],
    repos: Sequence[str],
    columns: bool = True,
) -> None:
    """Each latest materialization reports the true row counts, its location and matching columns.

    Partitioned assets: ``dagster/partition_row_count`` = rows of that partition's file,
    ``dagster/row_count`` = rows of the table over every stored partition (as of that write);
    ``training_dataset``: exported pairs (manifest and dataset.jsonl lines), the export dir.
    ``columns``: also compare each stored table's columns with the declared column schema
    (off for hand-built input tables that lack some generation columns).
    """
    import pyarrow.parquet as pq
    from dagster import AssetRecordsFilter

    store = TableStore(tables_dir)
    from cicdllm_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    for asset in partitioned:
        schema = graph.get(AssetKey(asset)).metadata["dagster/column_schema"]
        totals = []
        for repo in repos:
            records = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[repo]), limit=1
            ).records
            meta = records[0].asset_materialization.metadata  # type: ignore[union-attr]
            path = store.path_for(asset, repo)
            table = pq.read_table(path)
            assert meta["dagster/partition_row_count"].value == table.num_rows, (asset, repo)
            assert meta["dagster/uri"].value == path.resolve().as_uri(), (asset, repo)
            if columns:
                assert [c.name for c in schema.columns] == table.column_names, asset
            totals.append(meta["dagster/row_count"].value)
        assert (
            max(totals)
            == store.row_count(asset)
            == sum(pq.read_table(store.path_for(asset, r)).num_rows for r in repos)
        ), asset
    event = instance.get_latest_materialization_event(AssetKey("training_dataset"))
    meta = event.asset_materialization.metadata  # type: ignore[union-attr]
    lines = (export_dir / "dataset.jsonl").read_text(encoding="utf-8").splitlines()
    manifest = json.loads((export_dir / "manifest.json").read_text(encoding="utf-8"))
    assert meta["dagster/row_count"].value == len(lines) == manifest["pairs"]
    assert meta["dagster/uri"].value == export_dir.resolve().as_uri()
