"""The ``source_files`` asset: every file tracked at the repo's head commit, kept or skipped (with why)."""

import hashlib
import json
from typing import Any

import pyarrow as pa
from dagster import AssetExecutionContext, Failure, MetadataValue, Output

from cicdllm_assets.assets._conventions import repo_table_asset
from cicdllm_assets.assets._step import asset_step
from cicdllm_assets.chunking.plan import CHUNKER_VERSION
from cicdllm_assets.discovery.discover import SKIPPED, Discovery, SourceFile, no_files_kept_warning
from cicdllm_assets.discovery.table import source_files_table
from cicdllm_assets.discovery.verdicts import VerdictCache
from cicdllm_assets.repos.sync import repo_processing
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.storage.contract import SOURCE_FILES_SCHEMA

STAGE = "source_files"
DISCOVERY_VERSION = "1"
CODE_VERSION = f"source-files-d{DISCOVERY_VERSION}-c{CHUNKER_VERSION}"


def repository_row(repositories: pa.Table, repo: str) -> dict[str, Any]:
    """The single ``repositories`` row of this partition, validated."""
    missing = {"local_path", "head_commit"} - set(repositories.column_names)
    if missing:
        raise Failure(f"repositories table for {repo!r} lacks columns {sorted(missing)}")
    if repositories.num_rows != 1:
        raise Failure(f"repositories table for {repo!r} has {repositories.num_rows} rows, expected 1")
    row: dict[str, Any] = repositories.to_pylist()[0]
    if not row.get("local_path") or not row.get("head_commit"):
        raise Failure(f"repositories row for {repo!r} has no local_path/head_commit")
    return row


def _skip_preview(files: list[SourceFile], limit: int = 25) -> str:
    rows = [f for f in files if f.status == SKIPPED][:limit]
    if not rows:
        return "(no skipped files)"
    lines = ["| path | reason |", "| --- | --- |"]
    lines += [f"| `{f.path}` | {f.skip_reason} |" for f in rows]
    return "\n".join(lines)


@repo_table_asset(
    "ingest",
    CODE_VERSION,
    {"git", "parquet"},
    SOURCE_FILES_SCHEMA,
    "Files tracked at the head commit: language, encoding, tokens; skipped files keep their reason.",
)
def source_files(
    context: AssetExecutionContext, app_config: AppConfigResource, repositories: pa.Table
) -> Output[pa.Table]:
    """Discover, filter and token-count the files of this partition's checkout."""
    with asset_step(context, app_config, STAGE) as step:
        repo, settings, state = step.repo, step.settings, step.state
        row = repository_row(repositories, repo)
        commit = str(row["head_commit"])
        processing = repo_processing(settings.config.processing, settings.repos_file, repo)
        state.clear_failures(repo, STAGE)
        state.start_stage(repo, STAGE, total=0, unit="files")
        chunker = step.chunker()
        calls_before = chunker.counter.calls
        verdicts = VerdictCache(state, processing.skip_generated)
        discovery = Discovery(row["local_path"], commit, processing, chunker, verdicts=verdicts)
        try:
            entries = discovery.entries()
            state.start_stage(repo, STAGE, total=len(entries), unit="files")
            context.log.info(f"{len(entries)} files tracked at {commit[:12]} in {row['local_path']}")
            files = discovery.run(on_progress=lambda n: state.advance(repo, STAGE, done=n))
        finally:
            chunker.close()
        stats = discovery.stats
        state.finish_stage(repo, STAGE, "done")
        summary = (
            f"{STAGE}: {stats.files_kept} kept, {stats.files_skipped} skipped of {stats.files_total} files;"
            f" {stats.tokens} tokens; cache {chunker.stats.cache_hits} hits / {chunker.stats.cache_misses} misses"
        )
        state.log_event("info", summary, repo=repo)
        context.log.info(summary)
        warning = no_files_kept_warning(stats.files_total, stats.skipped_by_category) if not stats.files_kept else None
        if warning:
            state.log_event("warning", f"{STAGE}: {warning}", repo=repo)
            context.log.warning(warning)
        table = source_files_table(repo, commit, files)
        config_hash = hashlib.sha256(
            json.dumps(processing.model_dump(mode="json"), sort_keys=True).encode()
        ).hexdigest()[:12]
        version = f"{commit}:{config_hash}:{chunker.counter.identity}:{CODE_VERSION}"
        metadata: dict[str, Any] = {
            "commit": MetadataValue.text(commit),
            "files_total": MetadataValue.int(stats.files_total),
            "files_kept": MetadataValue.int(stats.files_kept),
            "files_skipped": MetadataValue.int(stats.files_skipped),
            "skipped_by_reason": MetadataValue.json(dict(sorted(stats.skipped_by_category.items()))),
            "bytes_read": MetadataValue.int(stats.bytes_read),
            "bytes_kept": MetadataValue.int(stats.bytes_kept),
            "tokens": MetadataValue.int(stats.tokens),
            "planned_chunks": MetadataValue.int(stats.chunks),
            "cache_hits": MetadataValue.int(chunker.stats.cache_hits),
            "cache_misses": MetadataValue.int(chunker.stats.cache_misses),
            "tokenizer_calls": MetadataValue.int(chunker.counter.calls - calls_before),
            "files_per_second": MetadataValue.float(round(stats.files_per_second, 1)),
            "seconds": MetadataValue.float(round(stats.seconds, 3)),
            "tokenizer": MetadataValue.path(str(chunker.counter.path)),
            "tokenizer_source": MetadataValue.text(chunker.tokenizer_source),
            "include_globs": MetadataValue.json(list(processing.include_globs)),
            "chunk_max_tokens": MetadataValue.int(chunker.budget),
            "skipped_files": MetadataValue.md(_skip_preview(files)),
        }
        if warning:
            metadata["warning"] = MetadataValue.text(warning)
        return step.output(table, metadata, hashlib.sha256(version.encode()).hexdigest()[:24])
