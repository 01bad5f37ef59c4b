"""The viewer keeps refreshing while another process writes the StateStore and Parquet tables."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from cicdllm_assets.config import Settings
from cicdllm_assets.tui.app import StatusApp
from cicdllm_assets.tui.screens import LogScreen
from cicdllm_assets.tui.widgets import ProgressPanel, ReposTable

WRITER = """
import sys, time
from pathlib import Path
import pyarrow as pa
from cicdllm_assets.storage.state import StateStore
from cicdllm_assets.storage.tables import TableStore

data_dir, stop = Path(sys.argv[1]), Path(sys.argv[2])
state = StateStore(data_dir / "state.db")
tables = TableStore(data_dir / "tables")
state.start_stage("live", "code_chunks", 100000, "files")
i = 0
while not stop.exists() and i < 5000:
    i += 1
    state.advance("live", "code_chunks", done=1)
    state.log_event("INFO", f"wrote chunk {i}", repo="live")
    tables.write("code_chunks", "live", pa.table({"repo": ["live"] * i, "chunk_key": [str(k) for k in range(i)],
                                                   "token_count": [10] * i}))
    time.sleep(0.02)
print(i)
"""


def test_counts_increase_while_another_process_writes(settings: Settings, tmp_path: Path) -> None:
    assert settings.path is not None
    settings.path.write_text(
        settings.path.read_text(encoding="utf-8") + "ui:\n  refresh_seconds: 0.2\n", encoding="utf-8"
    )
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(settings.data_dir), str(stop)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[int] = []
    log_sizes: list[int] = []

    def chunks(app: StatusApp) -> int:
        rows = app.query_one(ReposTable).row_texts()
        return int(rows[0][5]) if rows else 0

    async def scenario() -> None:
        app = StatusApp(battery_reader=lambda: None)
        async with app.run_test(size=(160, 40)) as pilot:
            await pilot.press("l")  # the log screen refreshes too
            deadline = time.monotonic() + 120
            while len(set(seen)) < 4 and time.monotonic() < deadline:
                before = app.refresh_count
                while app.refresh_count == before and time.monotonic() < deadline:
                    await pilot.pause(0.05)
                value = chunks(app)
                if value and (not seen or value > seen[-1]):
                    seen.append(value)
                    screen = app.screen
                    if isinstance(screen, LogScreen):
                        log_sizes.append(len(screen.lines))
            assert app.error is None, app.error
            assert "code_chunks" in app.query_one(ProgressPanel).plain_text
            assert app.refresh_seconds == 0.2

    try:
        asyncio.run(scenario())
    finally:
        stop.touch()
        _out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert len(seen) >= 4 and seen == sorted(seen), seen  # the shown count kept increasing
    assert log_sizes[-1] > log_sizes[0] or log_sizes[-1] == settings.config.ui.log_tail_lines
