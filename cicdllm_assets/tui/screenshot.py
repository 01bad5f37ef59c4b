"""Render the status viewer and the config editor to SVG (and PNG with ``rsvg-convert``).

``python -m cicdllm_assets.tui.screenshot OUT_DIR`` runs the real apps headless against
the project of ``$CICDLLM_CONFIG`` / ./cicdllm.yaml and writes ``status.svg`` and
``config-editor.svg`` (plus ``.png`` when ``rsvg-convert`` is on PATH). Used for the docs.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from cicdllm_assets.tui.app import ConfigEditorApp, StatusApp

SIZE = (170, 46)


async def _status(out: Path) -> Path:
    app = StatusApp()
    async with app.run_test(size=SIZE) as pilot:
        while app.refresh_count < 2:
            await pilot.pause(0.1)
        await pilot.pause(0.3)
        return Path(app.save_screenshot(filename="status.svg", path=str(out)))


async def _config(out: Path) -> Path:
    app = ConfigEditorApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.3)
        screen = app.screen
        select = getattr(screen, "select_field", None)
        if select is not None:
            select("generation.temperature")
            await pilot.pause(0.1)
            app.screen.query_one("#field-input").value = "3.5"  # type: ignore[attr-defined]
            await pilot.pause(0.3)
        return Path(app.save_screenshot(filename="config-editor.svg", path=str(out)))


def to_png(svg: Path) -> Path | None:
    """Convert with rsvg-convert if available (Debian: librsvg2-bin)."""
    tool = shutil.which("rsvg-convert")
    if tool is None:
        return None
    png = svg.with_suffix(".png")
    subprocess.run([tool, "--zoom", "1", "--background-color", "#0c0c0c", "-o", str(png), str(svg)], check=True)  # noqa: S603
    return png


def main(argv: list[str]) -> int:
    """Write both screenshots into ``argv[0]`` (default docs/screenshots)."""
    logging.disable(logging.WARNING)
    out = Path(argv[0] if argv else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    for svg in (asyncio.run(_status(out)), asyncio.run(_config(out))):
        png = to_png(svg)
        sys.stdout.write(f"{svg}{' -> ' + str(png) if png else ''}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
