"""The ``source_files`` table schema and conversion."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from cicdllm_assets.discovery.discover import SourceFile
from cicdllm_assets.quality.secrets import redact_field
from cicdllm_assets.storage.contract import SOURCE_FILES_SCHEMA


def source_files_table(repo: str, commit: str, files: Sequence[SourceFile]) -> pa.Table:
    """One row per tracked file (paths, symlink targets and reasons with secrets redacted)."""
    return pa.Table.from_pydict(
        {
            "repo": [repo] * len(files),
            "commit": [commit] * len(files),
            "path": [redact_field(f.path) for f in files],
            "blob_sha": [f.blob_sha for f in files],
            "size_bytes": [f.size_bytes for f in files],
            "language": [f.language for f in files],
            "encoding": [f.encoding for f in files],
            "line_count": [f.line_count for f in files],
            "token_count": [f.token_count for f in files],
            "chunk_count": [f.chunk_count for f in files],
            "status": [f.status for f in files],
            "skip_reason": [redact_field(f.skip_reason) for f in files],
            "skip_category": [f.skip_category for f in files],
            "mode": [f.mode for f in files],
            "symlink_target": [redact_field(f.symlink_target) for f in files],
        },
        schema=SOURCE_FILES_SCHEMA,
    )
