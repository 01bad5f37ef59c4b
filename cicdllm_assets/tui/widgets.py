"""Dashboard widgets of the status viewer. Each takes a :class:`Status` in ``update_status``.

Static panels also keep ``plain_text``: the exact text they show, without styles (used by
tests and handy for debugging).
"""

from __future__ import annotations

import io
import time
from datetime import datetime

from rich.console import Console, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from textual.widgets import DataTable, Static

from cicdllm_assets.status.model import RunInfo, StageStatus, Status
from cicdllm_assets.tui.format import human_bytes, human_duration

STATUS_STYLES = {
    "SUCCESS": "green",
    "FAILURE": "red",
    "DEAD": "red",
    "CANCELED": "yellow",
    "CANCELING": "yellow",
    "STARTED": "cyan",
    "STARTING": "cyan",
    "QUEUED": "blue",
    "NOT_STARTED": "dim",
    "done": "green",
    "running": "cyan",
    "failed": "red",
    "skipped": "dim",
}


def plain(renderable: RenderableType, width: int = 160) -> str:
    """A renderable as plain text (what a terminal of ``width`` columns would show)."""
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text(styles=False)


def clock(ts: float | None) -> str:
    """HH:MM:SS today, else 'Mon DD HH:MM'; '-' for None."""
    if ts is None:
        return "-"
    moment = datetime.fromtimestamp(ts)
    if moment.date() == datetime.now().date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%b %d %H:%M")


def styled_status(status: str | None) -> Text:
    """A run or stage status, coloured."""
    if not status:
        return Text("-", style="dim")
    return Text(status, style=STATUS_STYLES.get(status, ""))


def rate_text(stage: StageStatus) -> str:
    """'42.0/min' in the stage's unit (or '-'); the unit is shown beside the count."""
    if stage.rate_per_minute is None:
        return "-"
    return f"{stage.rate_per_minute:,.1f}/min"


class StaticPanel(Static):
    """A Static that remembers the plain text of what it shows."""

    plain_text: str = ""

    def show(self, renderable: RenderableType) -> None:
        """Display ``renderable`` and remember its text."""
        self.plain_text = plain(renderable)
        self.update(renderable)


REPO_COLUMNS = (
    "Repo",
    "Head",
    "Size",
    "Kept",
    "Skipped",
    "Chunks",
    "Questions",
    "Answers",
    "Accepted",
    "Failures",
    "Last run",
    "Run status",
    "Warning",
)


class ReposTable(DataTable[RenderableType]):
    """One row per repo partition."""

    def on_mount(self) -> None:
        """Set up the columns."""
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.add_columns(*REPO_COLUMNS)

    def update_status(self, status: Status) -> None:
        """Replace the rows, keeping the cursor on the same row number."""
        row = self.cursor_row
        self.clear()
        for repo in status.repos:
            run = repo.last_run
            kept = f"{repo.files_kept} ({human_bytes(repo.kept_bytes)})" if repo.kept_bytes else str(repo.files_kept)
            failures = Text(str(repo.failures), style="red" if repo.failures else "")
            self.add_row(
                repo.repo,
                (repo.head_commit or "-")[:10],
                human_bytes(repo.size_bytes),
                kept,
                str(repo.files_skipped),
                str(repo.chunks),
                str(repo.questions),
                str(repo.answers),
                f"{repo.qa_accepted}/{repo.qa_pairs}",
                failures,
                clock(run.created_at) if run else "-",
                styled_status(run.status if run else None),
                Text("; ".join(repo.warnings), style="yellow") if repo.warnings else "",
                key=repo.repo,
            )
        if self.row_count:
            self.move_cursor(row=min(row, self.row_count - 1))

    def row_texts(self) -> list[list[str]]:
        """Every row as plain strings (for tests and the --once view)."""
        return [[str(cell) for cell in self.get_row_at(i)] for i in range(self.row_count)]


class ProgressPanel(StaticPanel):
    """Stage progress, hierarchical: all repos → one repo, with its files/items count."""

    def update_status(self, status: Status) -> None:
        """Render the progress table."""
        self.show(progress_table(status))


def progress_table(status: Status) -> RenderableType:
    """Per stage: a total bar, then one bar per repo; count, rate and ETA on each row."""
    if not status.stages:
        return Text("No stage has reported progress yet (start a run: cicdllm run).", style="dim")
    table = Table(box=None, expand=True, pad_edge=False, show_edge=False, title="Progress", title_justify="left")
    table.add_column("Stage / repo", no_wrap=True)
    table.add_column("", width=17, no_wrap=True)
    table.add_column("Done", justify="right", no_wrap=True)
    table.add_column("Rate", justify="right", no_wrap=True)  # units per minute
    table.add_column("ETA", justify="right", no_wrap=True)
    table.add_column("State", no_wrap=True, min_width=7)
    per_repo: dict[str, list[StageStatus]] = {}
    for repo in status.repos:
        for stage in repo.stages:
            per_repo.setdefault(stage.stage, []).append(stage)
    for stage in status.stages:
        table.add_row(*_progress_row(Text(stage.stage, style="bold"), stage))
        rows = per_repo.get(stage.stage, [])
        for index, item in enumerate(rows):
            branch = "└ " if index == len(rows) - 1 else "├ "
            table.add_row(*_progress_row(Text(f"  {branch}{item.repo}"), item))
    if status.tokens_per_second is not None:
        table.caption = f"generation: {status.tokens_per_second:,.1f} tokens/s (last 5 min)"
        table.caption_justify = "left"
    return table


def _progress_row(label: Text, stage: StageStatus) -> tuple[RenderableType, ...]:
    total = max(stage.total, 1)
    bar = ProgressBar(total=total, completed=total * stage.fraction, width=16)
    done = f"{stage.done}/{stage.total} {stage.unit}"
    if stage.failed:
        done += f" ({stage.failed} failed)"
    eta = human_duration(stage.eta_seconds) if stage.status == "running" and not stage.stalled else "-"
    state = Text("stalled", style="bold yellow") if stage.stalled else styled_status(stage.status)
    return (label, bar, done, rate_text(stage), eta, state)


class ResourcesPanel(StaticPanel):
    """CPU, memory, battery (with the pause state) and throughput."""

    def update_status(self, status: Status) -> None:
        """Render the resources block."""
        self.show(resources_table(status))


def resources_table(status: Status) -> RenderableType:
    """A small key/value table."""
    res = status.resources
    table = Table(box=None, show_header=False, title="Resources", title_justify="left", pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("CPU", f"{res.cpu_percent:.0f}% of {res.cpu_count} cores")
    table.add_row(
        "Memory", f"{res.memory_percent:.0f}% ({human_bytes(res.memory_used)} / {human_bytes(res.memory_total)})"
    )
    battery = Text(res.battery.label, style="bold yellow" if res.battery.paused else "")
    table.add_row("Battery", battery)
    tokens = "-" if status.tokens_per_second is None else f"{status.tokens_per_second:,.1f} tokens/s"
    table.add_row("Generation", tokens)
    for load in status.llm_load:
        table.add_row("Model server", f"{load.label} ({load.server}; {load.repo} {load.stage})")
    totals = status.totals()
    table.add_row(
        "Totals",
        f"{len(status.repos)} repos, {totals['chunks']} chunks, {totals['answers']} answers, "
        f"{totals['qa_accepted']} accepted, {totals['failures']} failures",
    )
    return table


class RunsTable(DataTable[RenderableType]):
    """Recent Dagster runs from the instance."""

    def on_mount(self) -> None:
        """Set up the columns."""
        self.cursor_type = "row"
        self.add_columns("Run", "Job", "Partition", "Status", "Started", "Duration")

    def update_status(self, status: Status) -> None:
        """Replace the rows."""
        self.clear()
        for run in status.runs:
            self.add_row(*run_cells(run), key=run.run_id)

    def row_texts(self) -> list[list[str]]:
        """Every row as plain strings."""
        return [[str(cell) for cell in self.get_row_at(i)] for i in range(self.row_count)]


def run_cells(run: RunInfo) -> tuple[RenderableType, ...]:
    """The cells of one run row."""
    started = run.start_time or run.created_at
    return (
        run.run_id[:8],
        run.job_name,
        run.partition or "-",
        styled_status(run.status),
        clock(started),
        human_duration(run.duration_seconds),
    )


def status_line(status: Status | None, refresh_seconds: float, error: str | None = None) -> Text:
    """The bottom line: last refresh, interval, config file, problems."""
    text = Text()
    if status is None:
        text.append("collecting status…", style="dim")
    else:
        text.append(f"refreshed {clock(status.generated_at)}")
        text.append(f" · every {refresh_seconds:g}s · {status.config_path or '<defaults>'}", style="dim")
        for problem in status.errors:
            text.append(f" · {problem}", style="yellow")
    if error:
        text.append(f" · {error}", style="bold red")
    return text


def age(ts: float | None) -> str:
    """'12s ago'."""
    if ts is None:
        return "-"
    return human_duration(time.time() - ts) + " ago"
