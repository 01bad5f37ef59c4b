"""The ``evaluation`` asset (opt-in): base model vs base + adapter on held-out files."""

import shutil

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue

from cicdllm_assets.assets._step import ALL
from cicdllm_assets.assets.adapter import evaluation_asset, finetune_step
from cicdllm_assets.errors import INPUT
from cicdllm_assets.export.card import set_card_section
from cicdllm_assets.export.dataset import CARD_NAME
from cicdllm_assets.finetune.evaluate import EvaluationResult, evaluate_adapter
from cicdllm_assets.finetune.history import EvaluationHistory, evaluation_key
from cicdllm_assets.finetune.plot import CURVE_FILE
from cicdllm_assets.finetune.train import adapter_ready
from cicdllm_assets.resources.config_resource import AppConfigResource

STAGE = "evaluation"
CARD_SECTION = "evaluation"
CARD_ASSETS_DIR = "evaluation"


@evaluation_asset(
    "evaluation",
    ["adapter"],
    "Opt-in: mean loss and perplexity of the base model vs base + adapter on the test split (files the "
    "adapter never saw) and the valid split, side-by-side answers, recorded per dataset version.",
)
def evaluation(context: AssetExecutionContext, app_config: AppConfigResource) -> MaterializeResult:
    """Evaluate the current adapter once (a re-run reuses the recorded result)."""
    with finetune_step(context, app_config, STAGE) as (step, plan):
        settings, state, cfg = step.settings, step.state, step.settings.config.finetune
        if not adapter_ready(plan.adapter_dir):
            raise step.fail(
                f"no finished adapter for dataset {plan.data.version} at {plan.adapter_dir}: "
                "materialize `adapter` first (`cicdllm finetune`)",
                category=INPUT,
                permanent=True,
            )
        history = EvaluationHistory(state)
        key = evaluation_key(plan.key, cfg)
        result = history.find(key)
        evaluated_now = result is None
        if result is None:
            state.start_stage(ALL, STAGE, 1, "evaluations")
            result = evaluate_adapter(plan, cfg)
            history.record(key, result)
            state.advance(ALL, STAGE)
            state.finish_stage(ALL, STAGE, "done")
            state.log_event("info", f"{STAGE}: dataset {result.dataset_version}: {_headline(result)}")
            context.log.info(_headline(result))
        else:
            context.log.info(f"evaluation {key} already recorded: nothing evaluated ({_headline(result)})")
        curve = plan.adapter_dir / CURVE_FILE
        card = settings.export_dir / CARD_NAME
        if card.is_file():
            section = "## Evaluation\n\n" + result.markdown()
            if curve.is_file():
                target = settings.export_dir / CARD_ASSETS_DIR / CURVE_FILE
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(curve, target)
                section += f"\n![training curve]({CARD_ASSETS_DIR}/{CURVE_FILE})\n"
            card.write_text(set_card_section(card.read_text(encoding="utf-8"), CARD_SECTION, section), encoding="utf-8")
        metadata: dict[str, MetadataValue] = {
            "status": MetadataValue.text(result.status),
            "evaluated_now": MetadataValue.bool(evaluated_now),
            "dataset_version": MetadataValue.text(result.dataset_version),
            "adapter_key": MetadataValue.text(result.adapter_key),
            "report": MetadataValue.md(result.markdown()),
            "adapter_path": MetadataValue.path(str(plan.adapter_dir)),
        }
        if curve.is_file():
            metadata["training_curve"] = MetadataValue.path(str(curve))
        for split, score in result.splits.items():
            metadata[f"{split}_examples"] = MetadataValue.int(score.examples)
            for name, value in (
                ("base_loss", score.base_loss),
                ("adapter_loss", score.adapter_loss),
                ("base_perplexity", score.base_perplexity),
                ("adapter_perplexity", score.adapter_perplexity),
                ("loss_reduction", score.loss_reduction),
            ):
                if value is not None:
                    metadata[f"{split}_{name}"] = MetadataValue.float(value)
        return step.result(metadata, key)


def _headline(result: EvaluationResult) -> str:
    test = result.splits["test"]
    if not result.evaluated or test.base_loss is None or test.adapter_loss is None:
        return result.status
    return (
        f"test loss {test.base_loss:.4f} (base) -> {test.adapter_loss:.4f} (adapter) "
        f"on {test.examples} held-out example(s)"
    )
