"""Blocking checks on ``training_dataset``: they read the written export files back.

Blocking: a failed check stops downstream materializations in the same run and marks
the export as not to be trusted in the UI.
"""


from collections.abc import Callable

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

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


def _run(context: AssetCheckExecutionContext, check: Callable[[ExportFiles], CheckOutcome]) -> AssetCheckResult:
    out_dir = context.resources.app_config.settings().export_dir
    try:
        export = load_export(out_dir)
    except FileNotFoundError:
        return AssetCheckResult(
            passed=False, severity=AssetCheckSeverity.ERROR,
            description=f"no export manifest in {out_dir}", metadata={"export_dir": MetadataValue.path(str(out_dir))},
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
    return AssetCheckResult(passed=outcome.passed, severity=AssetCheckSeverity.ERROR, description=description,
                            metadata=metadata)


@asset_check(asset=training_dataset, blocking=True, required_resource_keys={"app_config"},
             description="Every export file parses and has its format's schema and row count.")
def schema_valid(context: AssetCheckExecutionContext) -> AssetCheckResult:
    """Schema of every written file."""
    return _run(context, check_schema)


@asset_check(asset=training_dataset, blocking=True, required_resource_keys={"app_config"},
             description="No empty question, answer, prompt or provenance field in any file.")
def no_empty_fields(context: AssetCheckExecutionContext) -> AssetCheckResult:
    """No empty field."""
    return _run(context, check_no_empty_fields)


@asset_check(asset=training_dataset, blocking=True, required_resource_keys={"app_config"},
             description="No pair id or (question, answer) twice; no duplicate line in a split file.")
def no_duplicates(context: AssetCheckExecutionContext) -> AssetCheckResult:
    """No duplicate."""
    return _run(context, check_no_duplicates)


@asset_check(asset=training_dataset, blocking=True, required_resource_keys={"app_config"},
             description="No secret (detect-secrets plugins + targeted patterns) in any exported text.")
def no_secrets(context: AssetCheckExecutionContext) -> AssetCheckResult:
    """No secret."""
    return _run(context, check_no_secrets)


@asset_check(asset=training_dataset, blocking=True, required_resource_keys={"app_config"},
             description="Train/valid/test are disjoint by source file.")
def splits_disjoint_by_file(context: AssetCheckExecutionContext) -> AssetCheckResult:
    """Splits disjoint by file."""
    return _run(context, check_splits_disjoint)
