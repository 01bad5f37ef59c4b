"""Drive the status viewer with Textual's Pilot against real project state."""

from __future__ import annotations

import asyncio
import time

import pytest
from textual.widgets import DataTable, Input, RichLog, Tree

from cicdllm_assets.config import Settings
from cicdllm_assets.performance.battery import BATTERY_DDL, BatteryReading
from cicdllm_assets.storage.state import StateStore
from cicdllm_assets.tui.app import StatusApp
from cicdllm_assets.tui.screens import ConfigScreen, FailuresScreen, HelpScreen, LogScreen
from cicdllm_assets.tui.widgets import ProgressPanel, ReposTable, ResourcesPanel, RunsTable, StaticPanel
from tests.status_helpers import make_failed_run, populate

SIZE = (180, 50)


async def wait_for(pilot, predicate, timeout: float = 60.0) -> None:
    """Let the app run until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the viewer"
        await pilot.pause(0.05)


def record_battery_pause(settings: Settings) -> None:
    """What pause_while_on_low_battery leaves in the StateStore while a run is paused."""
    state = StateStore(settings.state_db)
    state.ensure("battery", BATTERY_DDL)
    now = time.time()
    with state.transaction() as con:
        con.execute("INSERT OR REPLACE INTO battery_pauses VALUES (4242, 1, 12.0, 0, 20, ?, ?)", (now, now))


@pytest.fixture
def populated(settings: Settings) -> Settings:
    populate(settings)
    make_failed_run(settings.dagster_home, "beta")
    record_battery_pause(settings)
    return settings


def test_dashboard_and_every_key(populated: Settings) -> None:
    settings = populated
    original = settings.path.read_text(encoding="utf-8")

    async def scenario() -> None:
        app = StatusApp(battery_reader=lambda: BatteryReading(12.0, False))
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.refresh_count >= 1)
            # repos table: partition, head, sizes in B/KB/MB, counts, last run + status
            rows = {row[0]: row for row in app.query_one(ReposTable).row_texts()}
            assert set(rows) == {"alpha", "beta"}
            alpha = rows["alpha"]
            assert alpha[1] == "a1b2c3d4e5" and alpha[2] == "2.4 MB" and alpha[3] == "10 (14.6 KB)"
            assert alpha[4:10] == ["2", "7", "6", "5", "4/5", "2"]
            assert alpha[11] == "SUCCESS"
            # hierarchical progress: stage total, then each repo, with units
            progress = app.query_one(ProgressPanel).plain_text
            assert "source_files" in progress and "14/17 files" in progress
            assert "├ alpha" in progress and "└ beta" in progress and "4/10 items (1 failed)" in progress
            resources = app.query_one(ResourcesPanel).plain_text
            assert "CPU" in resources and "Memory" in resources
            assert "12% on battery — paused: on battery below 20%" in resources
            runs = app.query_one(RunsTable).row_texts()
            assert sorted(r[2] for r in runs) == ["alpha", "beta", "beta"]
            assert [r[3] for r in runs] == ["FAILURE", "SUCCESS", "SUCCESS"]  # newest first
            assert rows["beta"][11] == "FAILURE"

            # r: refresh now
            before = app.refresh_count
            await pilot.press("r")
            await wait_for(pilot, lambda: app.refresh_count > before)

            # f: failures with categories and messages; f again goes back
            await pilot.press("f")
            await wait_for(pilot, lambda: isinstance(app.screen, FailuresScreen))
            screen = app.screen
            categories = screen.query_one("#failure-categories", StaticPanel).plain_text
            assert "timeout" in categories and "parse_error" in categories and "decode_error" in categories
            assert "run_failure" in categories
            table = screen.query_one("#failures-table", DataTable)
            messages = [str(table.get_row_at(i)[5]) for i in range(table.row_count)]
            assert "request timed out after 120s" in messages and table.row_count == 4
            # newest first: the failed run, with the root cause of its step error
            assert messages[0] == "ValueError: kaboom: the model server refused the connection"
            assert str(table.get_row_at(0)[2]) == "status_probe"
            detail = screen.query_one("#failure-detail", StaticPanel).plain_text.strip()
            assert detail == "ValueError: kaboom: the model server refused the connection"
            await pilot.press("f")
            await wait_for(pilot, lambda: not isinstance(app.screen, FailuresScreen))

            # l: the log tail, newest last; escape goes back
            await pilot.press("l")
            await wait_for(pilot, lambda: isinstance(app.screen, LogScreen))
            log_screen = app.screen
            assert log_screen.lines[-1].endswith("alpha: answers: batch 1 of 3 done")
            assert "WARNING beta: 1 file could not be decoded" in log_screen.lines[-2]
            assert len(log_screen.query_one(RichLog).lines) >= 3
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, LogScreen))

            # ?: help lists every key
            await pilot.press("question_mark")
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
            help_text = app.screen.query_one("#help-body", StaticPanel).plain_text
            for key in ("q", "r", "f", "l", "c", "?"):
                assert f"\n{key} " in "\n" + help_text or help_text.startswith(f"{key} ")
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))

            # c: the config editor inside the viewer
            await pilot.press("c")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfigScreen))
            editor = app.screen
            tree = editor.query_one(Tree)
            assert {str(n.label) for n in tree.root.children} >= {"repos", "generation", "llm", "ui", "performance"}
            editor.select_field("ui.refresh_seconds")
            detail = editor.query_one("#field-detail", StaticPanel).plain_text
            assert "float" in detail and "2.0" in detail and "Textual" not in detail
            field_input = editor.query_one(Input)
            field_input.value = "0"
            await pilot.pause()
            message = editor.query_one("#field-message", StaticPanel).plain_text
            assert "ui.refresh_seconds: Input should be greater than or equal to 0.2" in message
            field_input.focus()
            await pilot.press("enter")
            await pilot.pause()
            assert settings.path.read_text(encoding="utf-8") == original  # refused: nothing written
            field_input.value = "0.5"
            await pilot.pause()
            assert "valid" in editor.query_one("#field-message", StaticPanel).plain_text
            await pilot.press("enter")
            await pilot.pause()
            written = settings.path.read_text(encoding="utf-8")
            assert "refresh_seconds: 0.5" in written and written.startswith("storage:")
            # hot reload: the viewer adopts the new interval on its next refresh
            await wait_for(pilot, lambda: app.refresh_seconds == 0.5)
            # while typing a value, the viewer's letter keys are just text
            editor.select_field("llm.model")
            field_input.focus()
            field_input.value = ""
            await pilot.press("q", "r", "f", "l", "c", "question_mark")
            await pilot.pause()
            assert field_input.value == "qrflc?" and isinstance(app.screen, ConfigScreen)
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, ConfigScreen))

            # q quits
            await pilot.press("q")
            await wait_for(pilot, lambda: not app.is_running)

    asyncio.run(scenario())


def test_viewer_survives_an_invalid_config(populated: Settings) -> None:
    async def scenario() -> None:
        app = StatusApp(battery_reader=lambda: None)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.refresh_count >= 1)
            populated.path.write_text("ui:\n  refresh_seconds: -1\n", encoding="utf-8")
            await pilot.press("r")
            # a timer refresh already in flight may still finish on the old config: wait for the next
            await wait_for(pilot, lambda: app.error is not None)
            assert "config invalid, using the previous one" in app.error
            assert app.query_one(ReposTable).row_count == 2
            assert "no battery" in app.query_one(ResourcesPanel).plain_text

    asyncio.run(scenario())


def test_panels_stack_at_80x24_and_a_repo_without_files_is_flagged(populated: Settings) -> None:
    """At 80x24 every panel keeps a usable width; a repo whose filters kept nothing shows a warning."""
    from tests.status_helpers import write_tables

    write_tables(populated, "gamma", files=0, skipped=3, chunks=0, questions=0, answers=0, accepted=0)
    state = StateStore(populated.state_db)
    state.start_stage("gamma", "source_files", 3, "files")
    state.finish_stage("gamma", "source_files", "done")

    async def scenario() -> None:
        app = StatusApp(battery_reader=lambda: BatteryReading(80.0, True))
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.refresh_count >= 1)
            await pilot.pause(0.2)
            for widget in (ReposTable, ProgressPanel, ResourcesPanel, RunsTable):
                region = app.query_one(widget).region
                assert region.width >= 40, (widget.__name__, region)
            rows = {row[0]: row for row in app.query_one(ReposTable).row_texts()}
            assert rows["gamma"][-1].startswith("0 of 3 files kept")
            assert rows["alpha"][-1] == ""

    asyncio.run(scenario())
