"""Adaptive concurrency, streaming with a silence timeout, cancellation before retry, seeds by server
kind: the OpenAI backend against the real fault server's capacity model (a queue, a service time
per request, abandoned work still served)."""

from __future__ import annotations

import statistics
import threading
import time

import pytest

from benchmarks.fault_server import Fault, FaultServer
from cicdllm_assets.llm.base import GenerationResult
from cicdllm_assets.llm.openai_backend import OpenAIBackend, identify_server
from tests.openai_helpers import make_backend, make_request


def _run_sampling_limit(backend: OpenAIBackend, n: int) -> tuple[list[GenerationResult], list[int]]:
    """Generate ``n`` requests in one call while a thread samples the limiter every 20 ms."""
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            samples.append(int(backend.load_status()["limit"]))  # type: ignore[call-overload]

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        results = list(backend.generate([make_request(f"k{i}") for i in range(n)]))
    finally:
        done.set()
        sampler.join()
    return results, samples


def test_limiter_settles_at_server_capacity_without_retries() -> None:
    # A service time long against scheduling jitter: on a loaded machine (the full suite on
    # two cores) every reply is late by some fixed overhead, which raises the baseline and so
    # the tolerated queueing (tolerance x baseline); at 0.2 s, 50 ms of overhead let a
    # limiter that works settle at 4. At 0.5 s it takes 200 ms.
    capacity, service, n = 2, 0.5, 32
    with (
        FaultServer(latency=service, capacity=capacity) as srv,
        make_backend(srv.base_url, max_concurrency=32, timeout_seconds=5.0) as backend,
    ):
        results, limits = _run_sampling_limit(backend, n)
        status = backend.load_status()
    assert len(results) == n and all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert [r.extra["attempts"] for r in results] == [1] * n
    assert srv.request_count == n  # no retry, no duplicate
    settled = limits[len(limits) // 2 :]
    assert 2 <= statistics.median(settled) <= 3, limits  # near the server's capacity, not 32
    assert max(settled) <= 4, limits
    assert srv.max_in_flight <= 8  # slow start overshoots once; a fixed 32 would queue 30
    assert status["drops"] == 0 and status["latency_ms"] is not None
    # steady-state throughput, measured by the server once the limiter has found it (after the
    # first quarter of the replies, past slow start), against capacity / service time; the
    # service time is the one the server achieved (on a loaded machine it exceeds the nominal)
    records = sorted(srv.chat_records, key=lambda r: r.finished_at or 0.0)
    served = [(r.finished_at or 0.0) - (r.started_at or 0.0) for r in records]
    warm = n // 4
    throughput = (n - 1 - warm) / ((records[-1].finished_at or 0.0) - (records[warm].finished_at or 0.0))
    assert throughput >= 0.9 * capacity / statistics.mean(served[warm + 1 :])


def test_fixed_concurrency_keeps_every_slot_busy() -> None:
    """The contrast: ``adaptive_concurrency: false`` fills the server's queue up to the bound."""
    with (
        FaultServer(latency=0.1, capacity=2) as srv,
        make_backend(srv.base_url, max_concurrency=8, adaptive_concurrency=False) as backend,
    ):
        results = list(backend.generate([make_request(f"k{i}") for i in range(16)]))
    assert all(r.ok for r in results)
    assert srv.max_in_flight == 8


def test_a_long_stream_is_never_cut_for_its_length() -> None:
    # 3 s of work, a token every ~0.2 s, a 1 s silence timeout: the request must finish
    with (
        FaultServer(latency=3.0, stream_chunks=12, prefill_share=0.1) as srv,
        make_backend(srv.base_url, timeout_seconds=1.0, max_retries=0) as backend,
    ):
        [result] = list(backend.generate([make_request("long")]))
    assert result.ok, result.error
    assert result.extra["streamed"] is True
    assert result.extra["attempts"] == 1 and srv.request_count == 1
    assert result.latency_ms > 2500


def test_silence_times_out_and_the_connection_is_closed_before_the_retry() -> None:
    with (
        FaultServer(faults=[Fault.slow(3.0, times=1)]) as srv,
        make_backend(srv.base_url, timeout_seconds=0.5, max_retries=2) as backend,
    ):
        [result] = list(backend.generate([make_request("k")]))
        time.sleep(0.2)
        first, retry = srv.chat_records
    assert result.ok and result.extra["attempts"] == 2
    assert first.client_port != retry.client_port
    assert first.client_gone_at is not None and first.client_gone_at <= retry.received_at
    assert backend.load_status()["drops"] == 1


def test_server_that_does_not_stream_is_read_as_json() -> None:
    with FaultServer(streaming=False) as srv, make_backend(srv.base_url) as backend:
        results = list(backend.generate([make_request("a"), make_request("b")]))
    assert all(r.ok and r.extra["streamed"] is False for r in results)
    assert all(r.completion_tokens > 0 and "usage_estimated" not in r.extra for r in results)
    assert all(record.body is not None and record.body["stream"] is True for record in srv.chat_records)


def test_streamed_reply_carries_the_servers_usage() -> None:
    with FaultServer() as srv, make_backend(srv.base_url) as backend:
        [result] = list(backend.generate([make_request("a")]))
    assert result.ok and result.extra["streamed"] is True
    assert "usage_estimated" not in result.extra
    assert result.prompt_tokens > 0 and result.completion_tokens == len(result.text.split())


@pytest.mark.parametrize(
    ("owned_by", "mode", "kind", "sent"),
    [
        (None, "auto", "mlx_lm.server", False),  # mlx_lm.server: no owned_by, BaseHTTP server header
        ("vllm", "auto", "vllm", True),
        ("cicdllm-fault-server", "auto", "unknown", True),
        (None, "always", "mlx_lm.server", True),
        ("vllm", "never", "vllm", False),
    ],
)
def test_seed_follows_the_servers_kind(owned_by: str | None, mode: str, kind: str, sent: bool) -> None:
    with FaultServer(owned_by=owned_by) as srv, make_backend(srv.base_url, seed=mode) as backend:
        results = list(backend.generate([make_request("a"), make_request("b")]))
        assert backend.server_kind == kind
    assert all(r.ok and r.extra["seed_sent"] is sent for r in results)
    assert all(("seed" in (record.body or {})) is sent for record in srv.chat_records)


@pytest.mark.parametrize(
    ("headers", "models", "kind"),
    [
        ({"server": "uvicorn"}, {"data": [{"id": "m", "owned_by": "vllm"}]}, "vllm"),
        ({"server": "llama.cpp"}, {"data": [{"id": "m", "owned_by": "llamacpp"}]}, "llama.cpp"),
        ({"server": "uvicorn"}, {"data": [{"id": "m", "owned_by": "me"}]}, "llama-cpp-python"),
        ({}, {"object": "list", "data": [{"id": "qwen3:0.6b", "owned_by": "library"}]}, "ollama"),
        ({}, {"data": [{"id": "m", "owned_by": "organization_owner"}]}, "lmstudio"),
        ({"server": "BaseHTTP/0.6 Python/3.11.7"}, {"object": "list", "data": [{"id": "/m"}]}, "mlx_lm.server"),
        ({"server": "BaseHTTP/0.6 Python/3.11.7"}, None, "mlx_lm.server"),  # its /v1/models failed mid-reply
        ({"server": "nginx"}, {"data": [{"id": "gpt"}]}, "unknown"),
    ],
)
def test_identify_server(headers: dict[str, str], models: dict[str, object] | None, kind: str) -> None:
    assert identify_server(headers, models) == kind


def test_invalid_seed_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="seed must be auto, always or never"):
        make_backend("http://127.0.0.1:9/v1", seed="sometimes")


@pytest.mark.parametrize(
    ("fault", "drops"),
    [
        (Fault.http(503), 1),
        (Fault.rate_limited(retry_after=0), 1),
        (Fault.drop(), 1),
        (Fault.http(400), 0),  # the request's own fault, not the server's load
    ],
)
def test_congestion_signals_cut_the_limit(fault: Fault, drops: int) -> None:
    with FaultServer(faults=[fault]) as srv, make_backend(srv.base_url, max_retries=1) as backend:
        list(backend.generate([make_request("k")]))
        assert backend.load_status()["drops"] == drops
    assert srv.request_count == 1 + drops
