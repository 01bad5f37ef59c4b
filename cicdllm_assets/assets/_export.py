"""The export as the asset and ``cicdllm export`` run it: the config sections and paths of one
:class:`~cicdllm_assets.config.Settings` handed to the domain's :func:`build_training_dataset`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from cicdllm_assets.config import Settings
from cicdllm_assets.export.dataset import DatasetResult, build_training_dataset


def export_with_settings(
    qa_pairs: pa.Table | Sequence[Path],
    settings: Settings,
    *,
    out_dir: Path | None = None,
    repositories: pa.Table | None = None,
    formats: Sequence[str] | None = None,
) -> DatasetResult:
    """Build the dataset from ``qa_pairs`` into ``out_dir`` (default ``export.out_dir``)."""
    return build_training_dataset(
        qa_pairs,
        settings.config.export,
        out_dir=out_dir or settings.export_dir,
        work_dir=settings.data_dir,
        llm=settings.config.llm,
        judge=settings.config.quality.judge,
        state_target=settings.state_target,
        repositories=repositories,
        formats=formats,
    )
