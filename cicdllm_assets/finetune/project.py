"""The adapter of a project's current export, model and ``finetune`` section."""

from __future__ import annotations

from pathlib import Path

from cicdllm_assets.config import ModelPaths
from cicdllm_assets.config.models import FinetuneConfig
from cicdllm_assets.finetune.data import locate_chat_data
from cicdllm_assets.finetune.train import TrainPlan, plan_training
from cicdllm_assets.llm.models.paths import resolve_model


def current_plan(models: ModelPaths, finetune: FinetuneConfig, export_dir: Path, adapters_dir: Path) -> TrainPlan:
    """Plan the adapter for the export in ``export_dir`` now, below ``adapters_dir``
    (raises FinetuneInputError without an export)."""
    data = locate_chat_data(export_dir)
    return plan_training(resolve_model(models), data, finetune, adapters_dir)
