"""The ``adapter`` asset (opt-in): LoRA fine-tuning of the base model on the mlx chat export."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from cicdllm_assets.assets._conventions import OWNERS, code_version
from cicdllm_assets.assets._step import ALL, Step, asset_step
from cicdllm_assets.finetune.live import LiveBoard
from cicdllm_assets.finetune.plot import CURVE_FILE, plot_training_curve
from cicdllm_assets.finetune.project import current_plan
from cicdllm_assets.finetune.train import TrainPlan, TrainProgress, train_adapter
from cicdllm_assets.llm.openblas import ensure_openblas
from cicdllm_assets.resources.config_resource import AppConfigResource

STAGE = "adapter"


def evaluation_asset(name: str, deps: list[str], description: str) -> Any:
    """The ``@asset`` decorator of the opt-in ``evaluation`` group (adapter, evaluation)."""
    return asset(
        name=name,
        group_name="evaluation",
        deps=deps,
        code_version=code_version(name, "finetune", f"assets/{name}.py"),
        kinds={"python", "mlx"},
        owners=OWNERS,
        description=description,
    )


@contextmanager
def finetune_step(
    context: AssetExecutionContext, app_config: AppConfigResource, stage: str
) -> Iterator[tuple[Step, TrainPlan]]:
    """:func:`asset_step` (unpartitioned) with the adapter plan of the current export, OpenBLAS
    loaded as configured; bad input raises :class:`~cicdllm_assets.finetune.data.FinetuneInputError`."""
    with asset_step(context, app_config, stage, partitioned=False) as step:
        ensure_openblas(enabled=step.settings.config.llm.mlx.use_openblas)
        settings = step.settings
        yield (
            step,
            current_plan(settings.model_paths, settings.config.finetune, settings.export_dir, settings.adapters_dir),
        )


@evaluation_asset(
    "adapter",
    ["training_dataset"],
    "Opt-in: LoRA adapter of the base model trained with mlx-lm on the mlx_chat export; resumable, "
    "keyed by dataset content + base model + finetune settings (a no-op re-run trains nothing).",
)
def adapter(context: AssetExecutionContext, app_config: AppConfigResource) -> MaterializeResult:
    """Train, resume or reuse the adapter of the current export."""
    with finetune_step(context, app_config, STAGE) as (step, plan):
        state, cfg = step.state, step.settings.config.finetune
        live = LiveBoard(state)
        state.start_stage(ALL, STAGE, plan.iters, "steps")
        seen = {"step": 0}

        def on_progress(p: TrainProgress) -> None:
            if seen["step"] == 0:
                seen["step"] = p.step - cfg.report_every  # the resumed-from step
                live.report(plan.key, seen["step"], p.total, None, None, seen["step"])
            state.advance(ALL, STAGE, done=p.step - seen["step"])
            seen["step"] = p.step
            live.report(plan.key, p.step, p.total, p.loss, p.tokens_per_second, p.step)

        context.log.info(f"adapter {plan.key}: {plan.iters} steps on {plan.data.counts['train']} train examples")
        result = train_adapter(plan, cfg, on_progress=on_progress)
        if seen["step"] < plan.iters:
            state.advance(ALL, STAGE, done=plan.iters - seen["step"])
        state.finish_stage(ALL, STAGE, "done")
        curve = plot_training_curve(
            result.state, plan.adapter_dir / CURVE_FILE, title=f"LoRA on dataset {plan.data.version}"
        )
        if result.reused:
            context.log.info(f"adapter {plan.key} is up to date at {plan.adapter_dir}: nothing trained")
        else:
            context.log.info(
                f"trained {result.trained_steps} steps (from step {result.resumed_from}) "
                f"in {result.seconds:.1f}s -> {plan.adapter_dir}"
            )
        state.log_event(
            "info",
            f"{STAGE}: {plan.key} trained {result.trained_steps} step(s)"
            + (f", resumed from step {result.resumed_from}" if result.resumed_from else ""),
        )
        for note in result.state.notes:
            context.log.warning(note)
        tps = result.state.tokens_per_second[1:] or result.state.tokens_per_second
        metadata: dict[str, MetadataValue] = {
            "adapter_path": MetadataValue.path(str(plan.adapter_dir)),
            "adapter_key": MetadataValue.text(plan.key),
            "dataset_version": MetadataValue.text(plan.data.version),
            "base_model": MetadataValue.text(plan.model),
            "steps": MetadataValue.int(plan.iters),
            "trained_steps": MetadataValue.int(result.trained_steps),
            "resumed_from_step": MetadataValue.int(result.resumed_from),
            "train_examples": MetadataValue.int(plan.data.counts["train"]),
            "trained_tokens": MetadataValue.int(result.state.trained_tokens),
            "params": MetadataValue.json(plan.params),
            "training_curve": MetadataValue.path(str(curve)),
        }
        if result.state.final_train_loss is not None:
            metadata["final_train_loss"] = MetadataValue.float(result.state.final_train_loss)
        if result.state.valid_curve:
            metadata["final_valid_loss"] = MetadataValue.float(result.state.valid_curve[-1][1])
        if tps:
            metadata["train_tokens_per_second"] = MetadataValue.float(sum(tps) / len(tps))
        return step.result(metadata, plan.key)
