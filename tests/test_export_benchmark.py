"""The export benchmark runs the real `cicdllm export` and DuckDB's COPY end to end at a small size.

Figures are not asserted (they depend on the machine); the verdict line and the exit code must agree.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_export_benchmark_small(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.export", "--sizes", "500,1500", "--out", str(tmp_path / "work")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert re.match(r"load average \(1 min\) at start: [\d.]+ on \d+ cores\n", out), out
    pairs = [int(n.replace(",", "")) for n in re.findall(r"ours \(cicdllm export, 8 formats\):\s+([\d,]+) pairs", out)]
    assert len(pairs) == 2 and 0 < pairs[0] < pairs[1] <= 1500, out
    assert out.count("DuckDB COPY (4 files)") == 2 and out.count("ours / DuckDB: time") == 2
    verdict = re.search(r"is ([\d.]+)x that at 500 .* (OK|MISSED)$", out.strip())
    assert verdict is not None, out
    growth, word = float(verdict.group(1)), verdict.group(2)
    assert word == ("OK" if growth <= 1.1 else "MISSED")
    assert proc.returncode == (0 if word == "OK" else 1)
