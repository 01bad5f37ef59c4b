"""``cicdllm finetune`` / ``cicdllm eval``: the opt-in evaluation job, run like ``cicdllm run`` runs
its steps (in this process, recorded in the Dagster instance, Ctrl-C cancels), with a live
progress bar fed by the ``adapter`` asset's reports in the state store.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType

from dagster import AssetKey, DagsterInstance, Definitions
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from cicdllm_assets.automation.evaluation_jobs import evaluation_job
from cicdllm_assets.config import Settings
from cicdllm_assets.finetune.live import LiveBoard
from cicdllm_assets.lifecycle import BackgroundLoop
from cicdllm_assets.llm.mlx_backend import release_models
from cicdllm_assets.runner.outcome import StepOutcome
from cicdllm_assets.runner.pipeline import _execute, reap_orphaned_runs
from cicdllm_assets.storage.state import open_existing_state


def run_evaluation_assets(
    defs: Definitions, instance: DagsterInstance, settings: Settings, assets: Sequence[str], log_level: str = "CRITICAL"
) -> StepOutcome:
    """Materialize ``assets`` (of ``evaluation_job``) in one run; the outcome says how it went."""
    reap_orphaned_runs(instance)
    try:
        return _execute(
            defs,
            instance,
            settings,
            evaluation_job.name,
            [AssetKey(a) for a in assets],
            None,
            "+".join(assets),
            log_level,
        )
    finally:
        release_models()


class TrainingProgressBar:
    """Context manager: a rich progress bar (steps, loss, tokens/s, ETA) polling the state store."""

    def __init__(self, settings: Settings, console: Console, refresh_seconds: float = 0.5) -> None:
        self.settings, self.console, self.refresh_seconds = settings, console, refresh_seconds
        self.since = time.time()
        self._board: LiveBoard | None = None
        self._poller = BackgroundLoop(self._poll, refresh_seconds, "cicdllm-finetune-progress")
        self.progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None

    def _poll(self) -> None:
        board = self._open_board()
        if board is not None:
            self.update(board)

    def _open_board(self) -> LiveBoard | None:
        """The board on the one state store the bar keeps open (None until the database exists)."""
        if self._board is None:
            state = open_existing_state(self.settings.state_target)
            if state is not None:
                self._board = LiveBoard(state)
        return self._board

    def update(self, board: LiveBoard) -> None:
        """Draw the latest report (if any arrived since the bar started)."""
        live = board.latest(self.since)
        if live is None:
            return
        loss = f"{live.loss:.3f}" if live.loss is not None else "-"
        tps = f"{live.tokens_per_second:,.0f}" if live.tokens_per_second is not None else "-"
        if self._task is None:
            self._task = self.progress.add_task("train", total=live.total, completed=live.step, loss=loss, tps=tps)
        else:
            self.progress.update(self._task, completed=live.step, total=live.total, loss=loss, tps=tps)

    def __enter__(self) -> TrainingProgressBar:
        if self.console.is_terminal:
            self.progress.__enter__()
            self._poller.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._poller.stop()
        if self._poller.started:
            board = self._open_board()
            if board is not None:
                with board.state:
                    self.update(board)
            self.progress.__exit__(exc_type, exc, tb)
