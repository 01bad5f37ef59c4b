"""Blocking checks on ``training_dataset``: they read the written export files back.

Blocking: a failed check stops downstream materializations in the same run and marks
the export as not to be trusted in the UI.
"""

from collections.abc import Callable

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    MetadataValue,
    asset_check,
)

from cicdllm_assets.assets._step import step_settings
from cicdllm_assets.assets.training_dataset import training_dataset
from cicdllm_assets.export.validate import (
    CheckOutcome,
    ExportFiles,
    check_no_duplicates,
    check_no_empty_fields,
    check_no_secrets,
    check_schema,
    check_splits_disjoint,
    load_export,
)
from cicdllm_assets.resources.config_resource import AppConfigResource


def _run(
    context: AssetCheckExecutionContext, app_config: AppConfigResource, check: Callable[[ExportFiles], CheckOutcome]
) -> AssetCheckResult:
    out_dir = step_settings(app_config).export_dir
    try:
        export = load_export(out_dir)
    except FileNotFoundError:
        return AssetCheckResult(
            passed=False,
            severity=AssetCheckSeverity.ERROR,
            description=f"no export manifest in {out_dir}",
            metadata={"export_dir": MetadataValue.path(str(out_dir))},
        )
    outcome = check(export)
    for problem in outcome.problems:
        context.log.error(problem)
    metadata: dict[str, MetadataValue] = {
        "export_dir": MetadataValue.path(str(out_dir)),
        "problems": MetadataValue.json(outcome.problems),
        **{name: MetadataValue.int(value) for name, value in outcome.counts.items()},
    }
    description = outcome.description if outcome.passed else f"FAILED: {outcome.problems[0]}"
    return AssetCheckResult(
        passed=outcome.passed, severity=AssetCheckSeverity.ERROR, description=description, metadata=metadata
    )


def _export_check(name: str, description: str, check: Callable[[ExportFiles], CheckOutcome]) -> AssetChecksDefinition:
    """A blocking check of ``training_dataset`` that runs ``check`` over the written export."""

    @asset_check(asset=training_dataset, name=name, blocking=True, description=description)
    def _check(context: AssetCheckExecutionContext, app_config: AppConfigResource) -> AssetCheckResult:
        return _run(context, app_config, check)

    return _check


schema_valid = _export_check(
    "schema_valid", "Every export file parses and has its format's schema and row count.", check_schema
)
no_empty_fields = _export_check(
    "no_empty_fields", "No empty question, answer, prompt or provenance field in any file.", check_no_empty_fields
)
no_duplicates = _export_check(
    "no_duplicates", "No pair id or (question, answer) twice; no duplicate line in a split file.", check_no_duplicates
)
no_secrets = _export_check(
    "no_secrets", "No secret (detect-secrets plugins + targeted patterns) in any exported text.", check_no_secrets
)
splits_disjoint_by_file = _export_check(
    "splits_disjoint_by_file", "Train/valid/test are disjoint by source file.", check_splits_disjoint
)
