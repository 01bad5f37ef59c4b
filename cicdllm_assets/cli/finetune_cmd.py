"""``cicdllm finetune`` and ``cicdllm eval``: the opt-in adapter and evaluation assets.

Both run through the Dagster instance like ``cicdllm run`` (the runs appear in
``dagster dev``). Exit codes: 0 done, 1 the run failed, 2 bad input, 130 Ctrl-C.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from cicdllm_assets.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    fail_usage,
    load_definitions_or_exit,
    load_settings_or_exit,
)
from cicdllm_assets.config import Settings
from cicdllm_assets.finetune.history import HistoryRow
from cicdllm_assets.runner.outcome import StepOutcome

if TYPE_CHECKING:
    from cicdllm_assets.finetune.train import TrainPlan

logger = logging.getLogger(__name__)


def _current_plan(settings: Settings) -> TrainPlan:
    """The adapter plan of the project's export, model and ``finetune`` section now."""
    from cicdllm_assets.finetune.project import current_plan

    return current_plan(settings.model_paths, settings.config.finetune, settings.export_dir, settings.adapters_dir)


def _adapter_info(settings: Settings) -> dict[str, Any]:
    from cicdllm_assets.finetune.train import TrainingState

    plan = _current_plan(settings)
    state = TrainingState.load(plan.adapter_dir)
    return {
        "adapter_path": str(plan.adapter_dir),
        "adapter_key": plan.key,
        "dataset_version": plan.data.version,
        "step": state.step,
        "steps": plan.iters,
        "done": state.done,
        "final_train_loss": state.final_train_loss,
        "session_starts": state.session_starts,
    }


def _evaluation_info(settings: Settings) -> dict[str, Any] | None:
    from cicdllm_assets.finetune.history import EvaluationHistory, evaluation_key
    from cicdllm_assets.storage.state import StateStore

    plan = _current_plan(settings)
    with StateStore(settings.state_target) as state:
        found = EvaluationHistory(state).find(evaluation_key(plan.key, settings.config.finetune))
    return found.to_dict() if found else None


def _run(ctx: click.Context, assets: list[str], as_json: bool) -> None:
    from cicdllm_assets.cli.run_cmd import install_stop_signals, quiet_library_noise
    from cicdllm_assets.finetune.data import FinetuneInputError
    from cicdllm_assets.runner.finetune import TrainingProgressBar, run_evaluation_assets
    from cicdllm_assets.runner.instance import InstanceError, open_instance

    quiet_library_noise()
    settings = load_settings_or_exit()
    try:
        _current_plan(settings)  # bad input (no export, empty train split) is a usage error, before any run
        instance = open_instance(settings)
    except (FinetuneInputError, InstanceError) as exc:
        fail_usage(str(exc))
    defs = load_definitions_or_exit(settings)
    install_stop_signals()
    console = Console(stderr=True)
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    try:
        with TrainingProgressBar(settings, console):
            outcome = run_evaluation_assets(defs, instance, settings, assets, "DEBUG" if verbose else "CRITICAL")
    except KeyboardInterrupt:
        click.echo("interrupted: the next run resumes from the last checkpoint", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    report: dict[str, Any] = {"run": outcome.to_dict(), "adapter": _adapter_info(settings)}
    if "evaluation" in assets:
        report["evaluation"] = _evaluation_info(settings)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        _print_report(report, outcome, Console())
    ctx.exit(0 if outcome.status in ("done", "unchanged") else EXIT_FAILED)


def _print_report(report: dict[str, Any], outcome: StepOutcome, console: Console) -> None:
    if outcome.status == "failed":
        console.print(f"[red]failed[/red]: {outcome.reason}")
        return
    info = report["adapter"]
    loss = info["final_train_loss"]
    console.print(
        f"adapter {info['adapter_key']} (dataset {info['dataset_version']}): step "
        f"{info['step']}/{info['steps']}, final train loss {'-' if loss is None else f'{loss:.4f}'}"
    )
    console.print(f"  {info['adapter_path']}")
    evaluation = report.get("evaluation")
    if evaluation:
        from cicdllm_assets.finetune.evaluate import EvaluationResult

        click.echo(EvaluationResult.from_dict(evaluation).markdown())


@click.command(name="finetune")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON on stdout.")
@click.pass_context
def finetune_command(ctx: click.Context, as_json: bool) -> None:
    """Fine-tune the base model with LoRA on the mlx_chat export (the `adapter` asset).

    Resumes from the last checkpoint after an interruption; with an unchanged dataset, model
    and `finetune` settings it trains nothing.
    """
    _run(ctx, ["adapter"], as_json)


@click.command(name="eval")
@click.option("--compare", is_flag=True, help="Print every recorded evaluation (one row per dataset version) and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_context
def eval_command(ctx: click.Context, compare: bool, as_json: bool) -> None:
    """Evaluate base model vs adapter on the held-out splits (`adapter` + `evaluation` assets)."""
    if not compare:
        _run(ctx, ["adapter", "evaluation"], as_json)
        return
    from cicdllm_assets.finetune.history import read_history_file

    rows = read_history_file(load_settings_or_exit().state_target)
    if as_json:
        click.echo(json.dumps([row.to_dict() for row in rows], indent=2))
        return
    console = Console()
    if not rows:
        console.print("no evaluations recorded yet: run `cicdllm eval`")
        return
    console.print(evaluations_table(rows))


def evaluations_table(rows: Sequence[HistoryRow], title: str = "Evaluations by dataset version") -> Table:
    """One line per recorded evaluation: dataset version, base vs adapter loss on test and valid."""
    table = Table(title=title, title_justify="left")
    left = ("when (UTC)", "dataset", "adapter", "status")
    for name in (*left, "test n", "test base", "test adapter", "change", "valid base", "valid adapter"):
        table.add_column(name, justify="left" if name in left else "right")
    for row in rows:
        change = "-"
        if row.test_base_loss and row.test_adapter_loss is not None:
            change = f"{100 * (row.test_adapter_loss - row.test_base_loss) / row.test_base_loss:+.1f} %"
        table.add_row(
            dt.datetime.fromtimestamp(row.created_at, dt.UTC).strftime("%Y-%m-%d %H:%M"),
            row.dataset_version,
            row.adapter_key,
            row.status,
            str(row.test_examples),
            _num(row.test_base_loss),
            _num(row.test_adapter_loss),
            change,
            _num(row.valid_base_loss),
            _num(row.valid_adapter_loss),
        )
    return table


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


commands = (finetune_command, eval_command)
