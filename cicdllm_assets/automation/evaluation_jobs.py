"""The opt-in ``evaluation_job``: ``adapter`` (LoRA fine-tuning) and ``evaluation``.

Not part of ``cicdllm run`` or automation: fine-tuning is expensive, so it runs only when
asked (``cicdllm finetune`` / ``cicdllm eval`` or the Dagster UI).
"""

from __future__ import annotations

from cicdllm_assets.automation.jobs import keys_selection, pipeline_job

FINETUNE_ASSETS: tuple[str, ...] = ("adapter",)
EVALUATION_ASSETS: tuple[str, ...] = ("adapter", "evaluation")

evaluation_job = pipeline_job(
    "evaluation_job",
    keys_selection(EVALUATION_ASSETS),
    "Opt-in: fine-tune the base model on the mlx_chat export (adapter), then compare base vs adapter on the "
    "held-out test split (evaluation).",
    "evaluation",
)
