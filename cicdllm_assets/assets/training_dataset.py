"""The ``training_dataset`` asset: every repository's accepted pairs, exported for fine-tuning."""

import hashlib
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetRecordsFilter,
    MetadataValue,
    Nothing,
    Output,
    asset,
)

from cicdllm_assets.assets._conventions import OWNERS, ROW_COUNT, URI, code_version, table_definition_metadata
from cicdllm_assets.assets._export import export_with_settings
from cicdllm_assets.assets._step import ALL, asset_step
from cicdllm_assets.export.plots import figure_tables
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.storage.contract import EXPORT_SCHEMA
from cicdllm_assets.storage.tables import TableStore

STAGE = "training_dataset"


@asset(
    group_name="dataset",
    # Not loaded through the IO manager: the export streams the stored partition files.
    ins={"qa_pairs": AssetIn(dagster_type=Nothing)},
    code_version=code_version("training_dataset", "export", "quality", "assets/training_dataset.py"),
    kinds={"python", "parquet", "huggingface"},
    owners=OWNERS,
    metadata=table_definition_metadata(EXPORT_SCHEMA),
    description=(
        "Accepted pairs of all repositories: licence allow-list, cross-repo dedup, secret re-scan, "
        "file-disjoint train/valid/test split, written in every configured format with a dataset card."
    ),
)
def training_dataset(context: AssetExecutionContext, app_config: AppConfigResource) -> Output[pa.Table]:
    """Export the dataset; the returned table counts pairs per repo, split and theme."""
    with asset_step(context, app_config, STAGE, partitioned=False) as step:
        settings, state = step.settings, step.state
        store = TableStore(settings.tables_dir)
        keys = context.asset_partition_keys_for_input("qa_pairs")
        paths = store.partition_files("qa_pairs", keys)
        if not paths:
            raise FileNotFoundError("no stored table for qa_pairs (materialize it first)")
        input_rows = store.row_count("qa_pairs", keys)
        state.start_stage(ALL, STAGE, input_rows, "pairs")
        repositories = store.read_all("repositories")
        result = export_with_settings(paths, settings, repositories=repositories)
        state.advance(ALL, STAGE, done=input_rows)
        state.finish_stage(ALL, STAGE, "done")
        for repo, info in result.excluded_repos.items():
            context.log.warning(f"{repo}: {info['pairs']} pairs excluded: {info['reason']}")
            state.log_event("warning", f"{STAGE}: excluded {info['pairs']} pairs: {info['reason']}", repo=repo)
        for note in result.notes:
            context.log.warning(note)
        splits = result.split_counts()
        state.log_event(
            "info",
            f"{STAGE}: exported {result.exported_pairs} pairs (train {splits['train']}, valid {splits['valid']}, "
            f"test {splits['test']}) to {result.out_dir}",
        )
        context.log.info(f"exported {result.exported_pairs} pairs to {result.out_dir}")
        summary = result.summary_table()
        metadata = {
            ROW_COUNT: MetadataValue.int(result.exported_pairs),
            URI: MetadataValue.text(result.out_dir.resolve().as_uri()),
            "export_dir": MetadataValue.path(str(result.out_dir)),
            "input_pairs": MetadataValue.int(result.input_pairs),
            "accepted_pairs": MetadataValue.int(result.accepted_pairs),
            "exported_pairs": MetadataValue.int(result.exported_pairs),
            **{f"{split}_pairs": MetadataValue.int(count) for split, count in splits.items()},
            "rejections": MetadataValue.json(result.rejections),
            "excluded_repos": MetadataValue.json(result.excluded_repos),
            **_excluded_warning(result.excluded_repos),
            "secrets_redacted": MetadataValue.json(result.redactions),
            "files": MetadataValue.json({str(f.path): f.rows for f in result.files}),
            "notes": MetadataValue.json(result.notes),
            "dataset_card": MetadataValue.path(str(result.card_path)),
            "summary": MetadataValue.md(_summary_md(summary)),
            **{f"plot_{name}": MetadataValue.md(table) for name, table in figure_tables(result).items()},
            "plot_files": MetadataValue.json({name: str(path) for name, path in result.plot_paths.items()}),
        }
        return step.output(summary, metadata, _content_version(context, keys, result.exported_pairs))


def _excluded_warning(excluded: dict[str, dict[str, Any]]) -> dict[str, MetadataValue]:
    """A ``warning`` entry (the run summary and `cicdllm status` show it) naming the repositories
    the licence allow-list kept out of the export."""
    if not excluded:
        return {}
    parts = [f"{repo}: {info['pairs']} pairs excluded, {info['reason']}" for repo, info in excluded.items()]
    return {"warning": MetadataValue.text("; ".join(parts))}


def _content_version(context: AssetExecutionContext, keys: Sequence[str], exported: int) -> str:
    """What the dataset was built from: each qa_pairs partition's own content version (its
    sorted answer ids and verdicts), and how many pairs were exported. New or changed pairs
    give a new version; an identical rebuild keeps it."""
    parts = [str(exported)]
    for key in sorted(keys):
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("qa_pairs"), asset_partitions=[key]), limit=1
        ).records
        tags = (records[0].asset_materialization.tags if records and records[0].asset_materialization else None) or {}
        parts.append(f"{key}={tags.get('dagster/data_version', '')}")
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:24]


def _summary_md(summary: pa.Table) -> str:
    if summary.num_rows == 0:
        return "_empty dataset_"
    lines = ["| repo | split | theme | pairs |", "|---|---|---|---|"]
    for row in summary.to_pylist()[:200]:
        lines.append(f"| {row['repo']} | {row['split']} | {row['theme']} | {row['pairs']} |")
    return "\n".join(lines)
