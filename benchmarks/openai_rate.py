"""Request-rate benchmark of the OpenAI backend against the fault server.

The server answers every request after a fixed latency ``L`` and serves at most ``C``
requests at once, so no client can do better than ``C / L`` requests per second. The
backend runs with ``max_concurrency = C``; the ratio achieved / ideal shows the client's
overhead (connection pooling, keep-alive, event loop, thread hand-off). Target: >= 0.9.
One untimed warm-up round of C requests opens the pool's connections first, so the
figure is the steady-state rate (the one-off start-up, ~0.15 s, is not a rate).

The degrading-server case (``--degrading``): capacity 2, service time ``L``, a server that
slows down by ``degradation`` per queued request and still serves work its clients gave
up on, a 1 s silence timeout. The backend with a fixed 8 in flight (the old behaviour)
and with adaptive concurrency (up to 8) each send the same requests to a fresh server;
the report gives achieved / ideal (``C / L``) for both, duplicate requests and timeouts.
Target: adaptive >= 0.6 and at least 2x the fixed ratio, no failed request, duplicates <= 5%.

    .venv/bin/python -m benchmarks.openai_rate [--requests 200 --latency 0.2 --capacity 8]
    .venv/bin/python -m benchmarks.openai_rate --degrading [--requests 40]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fault_server import FaultServer, FaultServerProcess
from cicdllm_assets.llm.base import ChatMessage, GenerationRequest
from cicdllm_assets.llm.openai_backend import OpenAIBackend, OpenAIBackendConfig

TARGET_RATIO = 0.9
TARGET_DEGRADING_RATIO = 0.6
TARGET_DEGRADING_GAIN = 2.0

_CODE = (
    "Repository: bench\nFile: src/bench.py (lines 1-4, python)\nSymbol: scale\n\n"
    "```python\ndef scale(values, factor):\n    return [v * factor for v in values]\n```\n"
)


def _requests(n: int, max_tokens: int, label: str = "bench") -> list[GenerationRequest]:
    prefix = (
        ChatMessage("system", "You are a senior software engineer."),
        ChatMessage("user", _CODE),
    )
    return [
        GenerationRequest(
            key=f"{label}-{i}",
            messages=(*prefix, ChatMessage("user", f"Answer this question about the code above: case {i}?")),
            max_tokens=max_tokens,
            temperature=0.0,
            seed=i,
            prefix_messages=2,
        )
        for i in range(n)
    ]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def run_openai_rate_benchmark(
    requests: int = 200,
    latency: float = 0.2,
    capacity: int = 8,
    max_tokens: int = 64,
    server: Literal["process", "thread"] = "process",
) -> dict[str, Any]:
    """Send ``requests`` through the backend to a server of ``capacity`` slots x ``latency`` s.

    ``server="process"`` (default) runs the fault server in its own process, as a real
    model server would be, so it does not compete with the client for the GIL;
    ``"thread"`` runs it in this process. Returns a JSON-serialisable dict: achieved and
    ideal request rates, their ratio (``ratio``, target >= 0.9), latency percentiles,
    errors, the server's max in-flight and the client process's CPU per request.
    """
    if requests < 1 or capacity < 1 or latency <= 0:
        raise ValueError("requests and capacity must be >= 1 and latency > 0")
    if server not in ("process", "thread"):
        raise ValueError(f"server must be 'process' or 'thread', got {server!r}")
    batch = _requests(requests, max_tokens)
    options: dict[str, Any] = {
        "latency": latency,
        "capacity": capacity,
        "max_lifetime": max(600.0, requests * latency * 4),
    }
    with contextlib.ExitStack() as stack:
        if server == "process":
            child = stack.enter_context(FaultServerProcess(**options))
            base_url = child.base_url
        else:
            local = stack.enter_context(FaultServer(**options))
            base_url = local.base_url
        config = OpenAIBackendConfig(
            base_url=base_url,
            model="bench-model",
            max_concurrency=capacity,
            adaptive_concurrency=False,  # the client's overhead at exactly the server's capacity
            timeout_seconds=max(30.0, latency * 10),
            max_retries=0,
            context_window=4096,
        )
        with OpenAIBackend(config) as backend:
            # Warm-up (not timed): one round of C requests starts the event-loop thread,
            # imports httpx's async backend and opens the pool's C keep-alive connections.
            warmup = list(backend.generate(_requests(capacity, max_tokens, label="warmup")))
            started = time.perf_counter()
            cpu_started = time.process_time()
            results = list(backend.generate(batch))
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
        if server == "process":
            stats = child.stop()
            server_requests, server_max_in_flight = stats.get("request_count", -1), stats.get("max_in_flight", -1)
        else:
            server_requests, server_max_in_flight = local.request_count, local.max_in_flight
        server_requests -= len(warmup)
    ok = [r for r in results if r.ok]
    latencies = [r.latency_ms for r in ok]
    ideal_rps = capacity / latency
    achieved_rps = len(ok) / elapsed if elapsed > 0 else 0.0
    ratio = achieved_rps / ideal_rps
    return {
        "benchmark": "openai_rate",
        "requests": requests,
        "warmup_requests": len(warmup),
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "latency_s": latency,
        "capacity": capacity,
        "max_concurrency": capacity,
        "elapsed_s": round(elapsed, 3),
        "ideal_elapsed_s": round(-(-requests // capacity) * latency, 3),
        "achieved_rps": round(achieved_rps, 2),
        "ideal_rps": round(ideal_rps, 2),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "client_latency_ms_p50": round(statistics.median(latencies), 1) if latencies else 0.0,
        "client_latency_ms_p95": round(_percentile(latencies, 0.95), 1),
        "server": server,
        "process_cpu_ms_per_request": round(cpu * 1000.0 / requests, 2),
        "server_requests": server_requests,
        "server_max_in_flight": server_max_in_flight,
    }


def _degrading_case(
    adaptive: bool, requests: int, latency: float, capacity: int, degradation: float, max_tokens: int
) -> dict[str, Any]:
    """One client configuration against a fresh degrading server (in its own process)."""
    options: dict[str, Any] = {
        "latency": latency,
        "capacity": capacity,
        "degradation": degradation,
        "max_lifetime": 900.0,
    }
    with FaultServerProcess(**options) as child:
        config = OpenAIBackendConfig(
            base_url=child.base_url,
            model="bench-model",
            max_concurrency=8,
            adaptive_concurrency=adaptive,
            timeout_seconds=1.0,
            max_retries=3,
            backoff_base_seconds=0.2,
            backoff_max_seconds=2.0,
            circuit_breaker_failures=1000,
            context_window=4096,
        )
        with OpenAIBackend(config) as backend:
            warmup = list(backend.generate(_requests(capacity, max_tokens, label="warmup")))
            started = time.perf_counter()
            results = list(backend.generate(_requests(requests, max_tokens)))
            elapsed = time.perf_counter() - started
            load = backend.load_status()
        stats = child.stop()
    ok = [r for r in results if r.ok]
    sent = stats.get("request_count", -1) - sum(int(str(r.extra.get("attempts", 1))) for r in warmup)
    ratio = len(ok) / elapsed / (capacity / latency) if elapsed > 0 else 0.0
    return {
        "client": "adaptive (up to 8)" if adaptive else "fixed 8",
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "elapsed_s": round(elapsed, 3),
        "achieved_rps": round(len(ok) / elapsed, 2) if elapsed > 0 else 0.0,
        "ratio": round(ratio, 3),
        "server_requests": sent,
        "duplicate_requests": sent - requests,
        "abandoned_by_client": stats.get("abandoned", -1),
        "server_max_in_flight": stats.get("max_in_flight", -1),
        "final_limit": load["limit"],
        "congestion_signals": int(str(load["drops"])) + int(str(load["latency_cuts"])),
    }


def run_degrading_benchmark(
    requests: int = 40, latency: float = 0.2, capacity: int = 2, degradation: float = 0.25, max_tokens: int = 64
) -> dict[str, Any]:
    """Fixed 8 in flight vs adaptive concurrency against the same degrading server."""
    if requests < 1 or latency <= 0 or capacity < 1 or degradation < 0:
        raise ValueError("requests and capacity must be >= 1, latency > 0 and degradation >= 0")
    fixed = _degrading_case(False, requests, latency, capacity, degradation, max_tokens)
    adaptive = _degrading_case(True, requests, latency, capacity, degradation, max_tokens)
    gain = adaptive["ratio"] / fixed["ratio"] if fixed["ratio"] > 0 else float("inf")
    return {
        "benchmark": "openai_rate_degrading",
        "requests": requests,
        "latency_s": latency,
        "capacity": capacity,
        "degradation": degradation,
        "ideal_rps": round(capacity / latency, 2),
        "fixed": fixed,
        "adaptive": adaptive,
        "adaptive_over_fixed": round(gain, 2),
        "targets": {"adaptive_ratio": TARGET_DEGRADING_RATIO, "adaptive_over_fixed": TARGET_DEGRADING_GAIN},
        "meets_target": adaptive["ratio"] >= TARGET_DEGRADING_RATIO
        and gain >= TARGET_DEGRADING_GAIN
        and adaptive["errors"] == 0
        and adaptive["duplicate_requests"] <= 0.05 * requests,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: print the benchmark result as JSON; exit 1 when the ratio misses the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--server",
        choices=["process", "thread"],
        default="process",
        help="run the fault server in its own process (default) or in a thread",
    )
    parser.add_argument(
        "--degrading", action="store_true", help="fixed 8 vs adaptive against a degrading server (capacity 2)"
    )
    args = parser.parse_args(argv)
    if args.degrading:
        report = run_degrading_benchmark(args.requests if args.requests != 200 else 40, args.latency)
        print(
            f"degrading server (capacity {report['capacity']}, {report['latency_s']} s per request): achieved/ideal "
            f"fixed 8 = {report['fixed']['ratio']:.2f}, adaptive = {report['adaptive']['ratio']:.2f}",
            file=sys.stderr,
        )
    else:
        report = run_openai_rate_benchmark(args.requests, args.latency, args.capacity, args.max_tokens, args.server)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0 if report["meets_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
