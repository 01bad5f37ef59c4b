"""The ``code_chunks`` asset: token-bounded, secret-redacted chunks of every kept source file."""

import time
from typing import Any

import pyarrow as pa
from dagster import AssetExecutionContext, MetadataValue, Output

from cicdllm_assets.assets._conventions import repo_table_asset
from cicdllm_assets.assets._step import asset_step
from cicdllm_assets.assets.source_files import repository_row
from cicdllm_assets.chunking.build import build_chunks, kept_in_chunk_order
from cicdllm_assets.chunking.plan import CHUNKER_VERSION
from cicdllm_assets.chunking.redaction_cache import RedactionCache
from cicdllm_assets.chunking.rows import ChunkRowBuilder, texts_digest
from cicdllm_assets.errors import READ
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.storage.contract import CODE_CHUNKS_SCHEMA

STAGE = "code_chunks"
CODE_VERSION = f"code-chunks-c{CHUNKER_VERSION}-r1"


@repo_table_asset(
    "ingest",
    CODE_VERSION,
    {"python", "parquet"},
    CODE_CHUNKS_SCHEMA,
    "Chunks of kept files split at syntax boundaries, each within processing.chunk_max_tokens, secrets redacted.",
)
def code_chunks(
    context: AssetExecutionContext,
    app_config: AppConfigResource,
    repositories: pa.Table,
    source_files: pa.Table,
) -> Output[pa.Table]:
    """Slice each kept file by its (cached) chunk plan, redact secrets, keep every chunk in budget."""
    with asset_step(context, app_config, STAGE) as step:
        repo, state = step.repo, step.state
        row = repository_row(repositories, repo)
        commit = str(row["head_commit"])
        started = time.perf_counter()
        kept = kept_in_chunk_order(source_files.to_pylist())
        state.clear_failures(repo, STAGE)
        state.start_stage(repo, STAGE, total=len(kept), unit="files")
        chunker = step.chunker()
        calls_before = chunker.counter.calls
        redaction_cache = RedactionCache(state)
        builder = ChunkRowBuilder(
            repo, commit, row.get("license"), chunker.budget, chunker.counter, redaction_cache=redaction_cache
        )
        try:
            built = build_chunks(
                row["local_path"],
                kept,
                chunker,
                builder,
                on_progress=lambda done, failed: state.advance(repo, STAGE, done=done, failed=failed),
            )
        finally:
            chunker.close()
        for failure in built.failures:
            state.record_failure(repo, STAGE, failure.path, READ, failure.message)
        failed = len(built.failures)
        table = builder.table()
        seconds = time.perf_counter() - started
        stats = builder.stats
        state.finish_stage(repo, STAGE, "done")
        summary = (
            f"{STAGE}: {stats.chunks} chunks from {len(kept) - failed} files, {stats.tokens} tokens,"
            f" {stats.redactions} secrets redacted; plan cache {chunker.stats.cache_hits} hits /"
            f" {chunker.stats.cache_misses} misses"
        )
        state.log_event("info", summary, repo=repo)
        context.log.info(summary)
        metadata: dict[str, Any] = {
            "commit": MetadataValue.text(commit),
            "chunks": MetadataValue.int(stats.chunks),
            "files": MetadataValue.int(len(kept) - failed),
            "files_failed": MetadataValue.int(failed),
            "tokens": MetadataValue.int(stats.tokens),
            "max_chunk_tokens": MetadataValue.int(stats.max_tokens),
            "chunk_max_tokens": MetadataValue.int(chunker.budget),
            "redactions": MetadataValue.int(stats.redactions),
            "redacted_chunks": MetadataValue.int(stats.redacted_chunks),
            "resplit_after_redaction": MetadataValue.int(stats.resplit_chunks),
            "duplicate_chunks_dropped": MetadataValue.int(stats.duplicate_chunks),
            "chunks_by_language": MetadataValue.json(dict(sorted(stats.by_language.items()))),
            "redaction_cache_hits": MetadataValue.int(redaction_cache.hits),
            "redaction_cache_misses": MetadataValue.int(redaction_cache.misses),
            "cache_hits": MetadataValue.int(chunker.stats.cache_hits),
            "cache_misses": MetadataValue.int(chunker.stats.cache_misses),
            "tokenizer_calls": MetadataValue.int(chunker.counter.calls - calls_before),
            "files_per_second": MetadataValue.float(round(len(kept) / seconds, 1) if seconds > 0 else 0.0),
            "seconds": MetadataValue.float(round(seconds, 3)),
        }
        digest = texts_digest([*table.column("chunk_key").to_pylist(), *table.column("text").to_pylist()])
        return step.output(table, metadata, digest)
