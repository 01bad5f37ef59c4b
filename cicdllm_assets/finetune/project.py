"""The adapter of a project's current export, model and ``finetune`` settings."""

from __future__ import annotations

from pathlib import Path

from cicdllm_assets.config import Settings
from cicdllm_assets.finetune.data import locate_chat_data
from cicdllm_assets.finetune.train import TrainPlan, plan_training
from cicdllm_assets.llm.models.paths import resolve_model


def adapters_root(settings: Settings) -> Path:
    """``finetune.out_dir`` or ``<data_dir>/adapters``."""
    out_dir = settings.config.finetune.out_dir
    return settings.resolve(out_dir) if out_dir else settings.data_dir / "adapters"


def current_plan(settings: Settings) -> TrainPlan:
    """Plan the adapter for the export on disk now (raises FinetuneInputError without one)."""
    data = locate_chat_data(settings.export_dir)
    return plan_training(resolve_model(settings), data, settings.config.finetune, adapters_root(settings))
