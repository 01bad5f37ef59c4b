"""The ``qa_pairs`` asset: one repository's answers, each accepted or rejected with a reason."""

import hashlib

import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, MetadataValue, Output

from cicdllm_assets.assets._conventions import code_version, repo_table_asset
from cicdllm_assets.assets._judge import judge_table
from cicdllm_assets.assets._step import asset_step
from cicdllm_assets.generation.judge import JUDGE_COLUMNS
from cicdllm_assets.quality.pairs import filter_pairs
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.storage.contract import QA_PAIRS_SCHEMA

STAGE = "qa_pairs"


def _data_version(table: pa.Table) -> str:
    ids = table.column("answer_id").to_pylist()
    flags = table.column("accepted").to_pylist()
    scores = zip(*(table.column(c).to_pylist() for c in JUDGE_COLUMNS[:3]), strict=True)
    payload = "\n".join(sorted(f"{i}:{int(bool(f))}:{s}" for i, f, s in zip(ids, flags, scores, strict=True)))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


@repo_table_asset(
    "dataset",
    code_version("qa_pairs", "quality", "assets/_judge.py", "assets/qa_pairs.py"),
    {"python", "parquet"},
    QA_PAIRS_SCHEMA,
    "Answers with quality verdicts: accepted, or rejected as empty, too short, refusal, truncated, "
    "Python code that does not parse, not grounded in the chunk or the repository's symbols, or a "
    "(near-)duplicate within the repository; with quality.judge enabled, an LLM judge scores the "
    "accepted pairs and rejects low scores (judge_low).",
    pool="llm",  # the opt-in judge (quality.judge) is an LLM stage
)
def qa_pairs(
    context: AssetExecutionContext, app_config: AppConfigResource, answers: pa.Table, code_chunks: pa.Table
) -> Output[pa.Table]:
    """Filter this repository's answers; every row is kept with ``accepted`` and ``reject_reason``."""
    with asset_step(context, app_config, STAGE) as step:
        repo, state = step.repo, step.state
        state.start_stage(repo, STAGE, answers.num_rows, "pairs")
        reported = [0]

        def progress(done: int) -> None:
            state.advance(repo, STAGE, done=done - reported[0])
            reported[0] = done

        settings = step.settings
        export = settings.config.export
        result = filter_pairs(
            answers, code_chunks, export.near_duplicate_threshold, export.min_grounded_ratio, progress=progress
        )
        state.finish_stage(repo, STAGE, "done")
        table, judged, judge_metadata = judge_table(context, settings, state, result.table, code_chunks)
        rejections = dict(sorted({**result.rejections, **(judged.rejections if judged else {})}.items()))
        rejected = sum(rejections.values())
        accepted = table.num_rows - rejected
        summary = ", ".join(f"{k}: {v}" for k, v in rejections.items()) or "none"
        state.log_event("info", f"{STAGE}: {accepted} accepted, {rejected} rejected ({summary})", repo=repo)
        context.log.info(f"{repo}: {accepted}/{answers.num_rows} pairs accepted; rejected: {summary}")
        preview_rows = table.filter(pc.invert(table.column("accepted"))).slice(0, 10)
        metadata = {
            "pairs": MetadataValue.int(table.num_rows),
            "accepted": MetadataValue.int(accepted),
            "rejected": MetadataValue.int(rejected),
            "acceptance_rate": MetadataValue.float(accepted / table.num_rows if table.num_rows else 0.0),
            "rejections": MetadataValue.json(rejections),
            **{f"rejected_{reason}": MetadataValue.int(count) for reason, count in rejections.items()},
            "rejected_preview": MetadataValue.md(_preview_md(preview_rows)),
            **judge_metadata,
        }
        return step.output(table, metadata, _data_version(table))


def _preview_md(table: pa.Table) -> str:
    if table.num_rows == 0:
        return "_no rejected pairs_"
    lines = ["| reason | question | detail |", "|---|---|---|"]
    for row in table.select(["reject_reason", "question", "reject_detail"]).to_pylist():
        cells = [
            str(row[c] or "").replace("|", "\\|").replace("\n", " ")[:120]
            for c in ("reject_reason", "question", "reject_detail")
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
