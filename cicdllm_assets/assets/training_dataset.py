"""The ``training_dataset`` asset: every repository's accepted pairs, exported for fine-tuning."""


import pyarrow as pa
from dagster import AssetExecutionContext, DataVersion, MetadataValue, Output, asset

from cicdllm_assets.assets.qa_pairs import pairs_data_version
from cicdllm_assets.export.dataset import ExportInputError, build_training_dataset
from cicdllm_assets.failures import permanent_failure
from cicdllm_assets.storage.state import StateStore
from cicdllm_assets.storage.tables import TableStore

STAGE = "training_dataset"
ALL_REPOS = "*"


@asset(
    group_name="dataset",
    required_resource_keys={"app_config"},
    description=(
        "Accepted pairs of all repositories: licence allow-list, cross-repo dedup, secret re-scan, "
        "file-disjoint train/valid/test split, written in every configured format with a dataset card."
    ),
)
def training_dataset(context: AssetExecutionContext, qa_pairs: pa.Table) -> Output[pa.Table]:
    """Export the dataset; the returned table counts pairs per repo, split and theme."""
    settings = context.resources.app_config.step_settings()
    state = StateStore(settings.state_db)
    state.start_stage(ALL_REPOS, STAGE, qa_pairs.num_rows, "pairs")
    repositories = TableStore(settings.tables_dir).read_all("repositories")
    try:
        result = build_training_dataset(qa_pairs, settings, repositories=repositories)
    except ExportInputError as exc:
        state.finish_stage(ALL_REPOS, STAGE, "failed")
        raise permanent_failure(str(exc)) from None
    except Exception as exc:
        state.finish_stage(ALL_REPOS, STAGE, "failed")
        state.log_event("error", f"{STAGE}: {type(exc).__name__}: {exc}")
        raise
    state.advance(ALL_REPOS, STAGE, done=qa_pairs.num_rows)
    state.finish_stage(ALL_REPOS, STAGE, "done")
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
        "export_dir": MetadataValue.path(str(result.out_dir)),
        "input_pairs": MetadataValue.int(result.input_pairs),
        "accepted_pairs": MetadataValue.int(result.accepted_pairs),
        "exported_pairs": MetadataValue.int(result.exported_pairs),
        **{f"{split}_pairs": MetadataValue.int(count) for split, count in splits.items()},
        "rejections": MetadataValue.json(result.rejections),
        "excluded_repos": MetadataValue.json(result.excluded_repos),
        "secrets_redacted": MetadataValue.json(result.redactions),
        "files": MetadataValue.json({str(f.path): f.rows for f in result.files}),
        "notes": MetadataValue.json(result.notes),
        "dataset_card": MetadataValue.path(str(result.card_path)),
        "summary": MetadataValue.md(_summary_md(summary)),
    }
    # The pairs it was built from and what was exported: a new or changed pair is a new version.
    version = f"{pairs_data_version(qa_pairs)}-{result.exported_pairs}"
    return Output(summary, data_version=DataVersion(version), metadata=metadata)


def _summary_md(summary: pa.Table) -> str:
    if summary.num_rows == 0:
        return "_empty dataset_"
    lines = ["| repo | split | theme | pairs |", "|---|---|---|---|"]
    for row in summary.to_pylist()[:200]:
        lines.append(f"| {row['repo']} | {row['split']} | {row['theme']} | {row['pairs']} |")
    return "\n".join(lines)
