"""Render the status viewer and the config editor to SVG (and PNG with ``rsvg-convert``).

``python -m cicdllm_assets.tui.screenshot OUT_DIR`` runs the real apps headless against
the project of ``$CICDLLM_CONFIG`` / ./cicdllm.yaml and writes ``status.svg`` and
``config-editor.svg`` (plus ``.png`` when ``rsvg-convert`` is on PATH). Used for the docs.
"""

from __future__ import annotations

import asyncio
import logging
import os
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


def ansi_to_svg(capture: Path, svg: Path, title: str) -> Path:
    """Render a terminal capture (``tmux capture-pane -p -e``) to SVG with rich."""
    from rich.console import Console
    from rich.text import Text

    lines = capture.read_text(encoding="utf-8").rstrip("\n").split("\n")
    width = max(len(Text.from_ansi(line).plain) for line in lines)
    console = Console(
        record=True,
        width=width,
        force_terminal=True,
        color_system="truecolor",
        file=open(os.devnull, "w", encoding="utf-8"),  # noqa: SIM115 - closed with the process
    )
    for line in lines:
        console.print(Text.from_ansi(line), no_wrap=True, crop=True, soft_wrap=False)
    console.save_svg(str(svg), title=title)
    return svg


def main(argv: list[str]) -> int:
    """Write both screenshots into ``argv[0]`` (default docs/screenshots).

    ``--ansi CAPTURE NAME OUT_DIR`` instead renders a tmux capture to ``NAME.svg``/``.png``.
    """
    logging.disable(logging.WARNING)
    if argv[:1] == ["--ansi"]:
        capture, name, out = Path(argv[1]), argv[2], Path(argv[3])
        out.mkdir(parents=True, exist_ok=True)
        svg = ansi_to_svg(capture, out / f"{name}.svg", title=name)
        png = to_png(svg)
        sys.stdout.write(f"{svg}{' -> ' + str(png) if png else ''}\n")
        return 0
    out = Path(argv[0] if argv else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    for svg in (asyncio.run(_status(out)), asyncio.run(_config(out))):
        png = to_png(svg)
        sys.stdout.write(f"{svg}{' -> ' + str(png) if png else ''}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
