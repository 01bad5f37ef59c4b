"""The evaluation history and live training table on both state backends (SQLite and Postgres).

Read and written directly (no training): ``EvaluationHistory`` record/find/replace, what
``cicdllm eval --compare --json`` and ``collect_status`` show, and the ``LiveBoard`` the
fine-tuning progress bar polls — each with ``storage.state_url`` pointing at the backend.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from click.testing import CliRunner
from rich.console import Console

from cicdllm_assets.cli.main import cli
from cicdllm_assets.config import load_settings
from cicdllm_assets.finetune.evaluate import EVALUATED, EvaluationResult, SplitScore
from cicdllm_assets.finetune.history import EvaluationHistory, read_history_file
from cicdllm_assets.finetune.live import LiveBoard
from cicdllm_assets.runner.finetune import TrainingProgressBar
from cicdllm_assets.status.collect import collect_status
from cicdllm_assets.storage.state import StateStore


def _result(version: str, adapter_loss: float) -> EvaluationResult:
    return EvaluationResult(
        dataset_version=version,
        dataset_hash=f"hash-{version}",
        adapter_key=f"adapter-{version}",
        model="tiny",
        status=EVALUATED,
        splits={
            "test": SplitScore("test", 3, 2.5, adapter_loss),
            "valid": SplitScore("valid", 2, 2.4, adapter_loss + 0.1),
        },
    )


def test_history_records_replaces_and_reads_on_both_backends(state_target: str | Path) -> None:
    settings = load_settings()
    assert settings.state_target == state_target
    assert read_history_file(state_target) == []  # nothing recorded yet (and nothing created)
    with StateStore(state_target) as state:
        history = EvaluationHistory(state)
        assert history.find("k1") is None
        history.record("k1", _result("v1", 2.0))
        history.record("k2", _result("v2", 1.5))
        history.record("k1", _result("v1", 1.9))  # the same evaluation again: its row is replaced
        found = history.find("k1")
    assert found is not None and found.splits["test"].adapter_loss == 1.9

    rows = read_history_file(state_target)
    assert [(r.dataset_version, r.test_adapter_loss) for r in rows] == [("v1", 1.9), ("v2", 1.5)]
    assert rows[0].test_examples == 3 and rows[0].valid_adapter_loss == 2.0

    shown = CliRunner().invoke(cli, ["eval", "--compare", "--json"])
    assert shown.exit_code == 0, shown.output
    assert [(r["dataset_version"], r["test_adapter_loss"]) for r in json.loads(shown.output)] == [
        ("v1", 1.9),
        ("v2", 1.5),
    ]
    status = collect_status(settings, battery_reader=lambda: None)
    assert not status.errors, status.errors
    assert [r.adapter_key for r in status.evaluations] == ["adapter-v1", "adapter-v2"]


def test_live_board_and_progress_bar_on_both_backends(state_target: str | Path) -> None:
    settings = load_settings()
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=150, color_system=None)
    with StateStore(state_target) as state:
        board = LiveBoard(state)
        assert board.latest() is None
        board.report("k1", 10, 40, 2.5, 900.0, 10)
        board.report("k1", 12, 40, 1.234, 1000.0, 10)  # replaces k1's row
        board.report("k0", 1, 8, None, None, 0)
        latest = board.latest()
        assert latest is not None and (latest.adapter_key, latest.step) == ("k0", 1)
        assert board.latest(since=latest.updated_at + 1) is None
        # the bar's final read goes through settings.state_target
        with TrainingProgressBar(settings, console, refresh_seconds=60):
            board.report("k1", 20, 40, 0.75, 1100.0, 10)
    text = out.getvalue()
    assert "20/40" in text and "loss 0.750" in text and "1,100 tok/s" in text
