"""Fine-tuning and evaluation (issue 12) through the CLI and Dagster, on the real mlx-lm path.

The tiny random model (tests/llm_fixtures.py) covers resume, no-op, empty test split and
mlx-lm's own CLI loading the adapter; the embedded SmolLM2-135M covers what the feature is
for: the adapter's loss on held-out files is lower than the base model's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from dagster import AssetKey, DagsterInstance

from cicdllm_assets.cli.main import cli
from cicdllm_assets.config import load_settings
from cicdllm_assets.config.models import FinetuneConfig
from cicdllm_assets.export.card import set_card_section
from cicdllm_assets.finetune.evaluate import NO_TEST_FILES
from cicdllm_assets.finetune.history import read_history_file
from cicdllm_assets.finetune.project import current_plan
from cicdllm_assets.finetune.train import ADAPTER_FILE, TrainingState
from tests.finetune_helpers import REPO_ROOT, write_repo_export
from tests.generation_support import write_project_config
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture

VENV_BIN = Path(sys.executable).parent
TINY_FINETUNE = {
    "iters": 12,
    "batch_size": 2,
    "num_layers": 2,
    "checkpoint_every": 4,
    "eval_every": 6,
    "val_batches": 2,
    "learning_rate": 1e-3,
    "samples": 1,
    "sample_max_tokens": 8,
}


def _configure(project: Path, model: Path | str, per_split: dict[str, int], **finetune: Any) -> None:
    write_project_config(project, llm={"model": str(model)}, finetune={**TINY_FINETUNE, **finetune})
    write_repo_export(project / "dataset", per_split)


def _invoke_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output[-3000:]
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _latest_metadata(asset: str) -> dict[str, Any]:
    with DagsterInstance.get() as instance:
        records = instance.fetch_materializations(AssetKey(asset), limit=1).records
        assert records, f"{asset} was never materialized"
        metadata = records[0].asset_materialization.metadata  # type: ignore[union-attr]
        return {key: getattr(value, "value", value) for key, value in metadata.items()}


def _materializations(asset: str) -> int:
    with DagsterInstance.get() as instance:
        return len(instance.fetch_materializations(AssetKey(asset), limit=100).records)


def test_finetune_config_checkpoints_fall_on_reports() -> None:
    with pytest.raises(ValueError, match="multiple of report_every"):
        FinetuneConfig(checkpoint_every=5, report_every=2)
    with pytest.raises(ValueError, match="-1"):
        FinetuneConfig(num_layers=0)


def test_card_section_is_replaced_not_repeated() -> None:
    card = "# Card\n\ntext\n"
    once = set_card_section(card, "evaluation", "## Evaluation\n\nfirst")
    twice = set_card_section(once, "evaluation", "## Evaluation\n\nsecond")
    assert twice.count("## Evaluation") == 1
    assert "second" in twice and "first" not in twice
    assert twice.startswith(card.rstrip("\n"))


def test_missing_export_is_a_usage_error(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    write_project_config(project, llm={"model": str(tiny_model_dir)})
    result = CliRunner().invoke(cli, ["finetune"])
    assert result.exit_code == 2
    assert "no mlx_chat export" in result.output


def test_eval_reruns_nothing_and_mlx_lm_loads_the_adapter(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    _configure(project, tiny_model_dir, {"train": 12, "valid": 4, "test": 3})
    first = _invoke_json("eval")
    assert first["run"]["status"] == "done"
    adapter = _latest_metadata("adapter")
    assert adapter["trained_steps"] == 12 and adapter["resumed_from_step"] == 0
    evaluation = first["evaluation"]
    assert evaluation["status"] == "evaluated"
    assert evaluation["splits"]["test"]["examples"] == 3
    assert evaluation["splits"]["test"]["base_loss"] != evaluation["splits"]["test"]["adapter_loss"]
    assert len(evaluation["samples"]) == 1
    adapter_dir = Path(adapter["adapter_path"])
    assert {p.name for p in adapter_dir.iterdir()} >= {"adapter_config.json", ADAPTER_FILE, "training_curve.png"}
    assert (adapter_dir / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    card = project / "dataset" / "README.md"
    assert not card.exists()  # the test wrote no card: the evaluation adds none
    weights_mtime = (adapter_dir / ADAPTER_FILE).stat().st_mtime_ns

    second = _invoke_json("eval")
    assert second["run"]["status"] == "done"
    assert _latest_metadata("adapter")["trained_steps"] == 0
    assert _latest_metadata("evaluation")["evaluated_now"] is False
    assert second["evaluation"] == evaluation
    assert (adapter_dir / ADAPTER_FILE).stat().st_mtime_ns == weights_mtime
    assert len(read_history_file(load_settings().state_db)) == 1

    compare = CliRunner().invoke(cli, ["eval", "--compare", "--json"], catch_exceptions=False)
    (row,) = json.loads(compare.stdout)
    assert row["dataset_version"] == evaluation["dataset_version"]
    assert row["test_adapter_loss"] == evaluation["splits"]["test"]["adapter_loss"]
    status = CliRunner().invoke(cli, ["status", "--once", "--json", "--no-runs"], catch_exceptions=False)
    assert json.loads(status.stdout)["evaluations"] == [row]
    for args in (["eval", "--compare"], ["status", "--once", "--no-runs"]):
        shown = CliRunner(env={"COLUMNS": "200"}).invoke(cli, args, catch_exceptions=False)
        assert shown.exit_code == 0 and evaluation["dataset_version"] in shown.output, shown.output

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for command in (
        [
            "generate",
            "--model",
            str(tiny_model_dir),
            "--adapter-path",
            str(adapter_dir),
            "--prompt",
            "def add",
            "--max-tokens",
            "4",
        ],
        [
            "fuse",
            "--model",
            str(tiny_model_dir),
            "--adapter-path",
            str(adapter_dir),
            "--save-path",
            str(project / "fused"),
        ],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "cicdllm_assets.llm.mlx_cli", *command],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    assert (project / "fused" / "model.safetensors").is_file()


def test_empty_test_split_is_not_evaluated_and_not_a_failure(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    _configure(project, tiny_model_dir, {"train": 6, "valid": 2, "test": 0}, iters=2, checkpoint_every=2)
    (project / "dataset" / "README.md").write_text("# dataset card\n", encoding="utf-8")
    report = _invoke_json("eval")
    assert report["run"]["status"] == "done"
    assert report["evaluation"]["status"] == NO_TEST_FILES
    assert report["evaluation"]["splits"]["test"]["base_loss"] is None
    assert report["evaluation"]["splits"]["valid"]["adapter_loss"] is not None
    assert _latest_metadata("evaluation")["status"] == NO_TEST_FILES
    card = (project / "dataset" / "README.md").read_text(encoding="utf-8")
    assert "## Evaluation" in card and NO_TEST_FILES in card
    assert (project / "dataset" / "evaluation" / "training_curve.png").is_file()


@pytest.mark.slow
def test_sigkill_during_training_resumes_from_the_last_checkpoint(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    iters, every = 60, 10
    _configure(project, tiny_model_dir, {"train": 12, "valid": 0, "test": 0}, iters=iters, checkpoint_every=every)
    settings = load_settings()
    adapter_dir = current_plan(
        settings.model_paths, settings.config.finetune, settings.export_dir, settings.adapters_dir
    ).adapter_dir
    state_file = adapter_dir / "training.json"
    process = subprocess.Popen(
        [str(VENV_BIN / "cicdllm"), "finetune"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            if state_file.is_file() and TrainingState.load(adapter_dir).checkpoint:
                break
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    killed = TrainingState.load(adapter_dir)
    assert process.returncode == -signal.SIGKILL
    assert not killed.done and killed.checkpoint is not None
    resumed_from = int(killed.checkpoint)
    assert 0 < resumed_from < iters and resumed_from % every == 0

    report = _invoke_json("finetune")
    assert report["run"]["status"] == "done"
    metadata = _latest_metadata("adapter")
    assert metadata["resumed_from_step"] == resumed_from
    assert metadata["trained_steps"] == iters - resumed_from
    final = TrainingState.load(adapter_dir)
    assert final.done and final.session_starts == [0, resumed_from]
    # every step reported exactly once: the counter went on from the checkpoint, not from 0
    assert [int(step) for step, _ in final.train_curve] == list(range(1, iters + 1))
    assert _materializations("adapter") == 1


EMBEDDED_DIR = REPO_ROOT / ".cicdllm" / "models" / "smollm2-135m-instruct"


@pytest.mark.slow
def test_adapter_lowers_held_out_loss_with_the_embedded_model(project: Path) -> None:
    """SmolLM2-135M, 8 LoRA steps on questions about this repository's own modules: the
    adapter's loss on the test split (other files) is well below the base model's."""
    model: Path | str = EMBEDDED_DIR
    if not (EMBEDDED_DIR / "model.safetensors").is_file():  # a fresh checkout: prepare it like a user would
        write_project_config(project)
        assert CliRunner().invoke(cli, ["model", "prepare"], catch_exceptions=False).exit_code == 0
        model = "embedded"
    _configure(
        project,
        model,
        {"train": 24, "valid": 4, "test": 6},
        iters=8,
        batch_size=2,
        num_layers=2,
        checkpoint_every=4,
        eval_every=100,
        val_batches=1,
        learning_rate=3e-4,
        samples=1,
        sample_max_tokens=24,
    )
    report = _invoke_json("eval")
    assert report["run"]["status"] == "done"
    assert _latest_metadata("adapter")["trained_steps"] == 8
    test, valid = report["evaluation"]["splits"]["test"], report["evaluation"]["splits"]["valid"]
    assert test["examples"] == 6 and valid["examples"] == 4
    # measured: test 2.55 -> 0.80, valid 2.44 -> 0.81; an untrained or unapplied adapter gives equal losses
    assert test["adapter_loss"] < 0.8 * test["base_loss"]
    assert valid["adapter_loss"] < 0.8 * valid["base_loss"]
    metadata = _latest_metadata("evaluation")
    assert metadata["test_adapter_loss"] == pytest.approx(test["adapter_loss"])
    assert metadata["test_base_perplexity"] == pytest.approx(test["base_perplexity"])


def test_progress_bar_shows_steps_loss_and_eta(settings: Any) -> None:
    import io

    from rich.console import Console

    from cicdllm_assets.finetune.live import LiveBoard
    from cicdllm_assets.runner.finetune import TrainingProgressBar
    from cicdllm_assets.storage.state import StateStore

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=150, color_system=None)
    board = LiveBoard(StateStore(settings.state_db))
    with TrainingProgressBar(settings, console, refresh_seconds=60) as bar:
        board.report("k1", 10, 40, 2.5, 900.0, 10)
        bar.update(board)
        time.sleep(0.3)
        board.report("k1", 12, 40, 1.234, 1000.0, 10)
        bar.update(board)
    text = out.getvalue()
    assert "12/40" in text and "loss 1.234" in text and "1,000 tok/s" in text and "ETA" in text
