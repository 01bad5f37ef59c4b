"""The rate benchmark runs end to end (its ratio is reported, not asserted: no wall-clock asserts)."""

from __future__ import annotations

import pytest

from benchmarks.openai_rate import run_degrading_benchmark, run_openai_rate_benchmark


@pytest.mark.parametrize("server", ["thread", "process"])
def test_rate_benchmark_smoke(server: str) -> None:
    report = run_openai_rate_benchmark(requests=24, latency=0.05, capacity=4, server=server)  # type: ignore[arg-type]
    assert report["ok"] == 24 and report["errors"] == 0
    assert report["warmup_requests"] == 4
    assert report["server_requests"] == 24
    assert 1 <= report["server_max_in_flight"] <= 4
    assert report["ideal_rps"] == pytest.approx(80.0)
    assert report["ratio"] > 0
    assert set(report) >= {"achieved_rps", "ideal_rps", "ratio", "meets_target", "elapsed_s"}


def test_rate_benchmark_validates_arguments() -> None:
    with pytest.raises(ValueError, match="latency"):
        run_openai_rate_benchmark(requests=1, latency=0, capacity=1)
    with pytest.raises(ValueError, match="server"):
        run_openai_rate_benchmark(requests=1, server="cluster")  # type: ignore[arg-type]


def test_degrading_benchmark_smoke() -> None:
    """Both clients run against fresh degrading servers (figures are the benchmark's to judge)."""
    report = run_degrading_benchmark(requests=12)
    fixed, adaptive = report["fixed"], report["adaptive"]
    assert adaptive["ok"] == 12 and adaptive["errors"] == 0
    assert adaptive["server_requests"] >= 12 and fixed["server_requests"] >= 12
    assert fixed["ok"] + fixed["errors"] == 12
    assert fixed["final_limit"] == 8 and 1 <= adaptive["final_limit"] <= 8
    assert set(report) >= {"adaptive_over_fixed", "meets_target", "ideal_rps"}
