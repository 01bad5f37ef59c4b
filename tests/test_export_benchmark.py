"""The export benchmark runs end to end at a small size (figures are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_export_benchmark_small(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.export", "--rows", "3000", "--memory-sizes", "500,3000",
         "--out", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for fmt in ("jsonl", "csv", "parquet", "mlx_chat", "mlx_completions", "alpaca", "sharegpt", "openai"):
        assert f"ours {fmt}" in out
    assert "duckdb COPY (zstd" in out and "Parquet: ours" in out and "Peak RSS grows" in out
