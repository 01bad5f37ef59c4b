"""OpenAI backend against the real fault-injecting HTTP server: retries, 429, 4xx, breaker, bounds."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import threading
import time

import pytest

from benchmarks.fault_server import Fault, FaultServer
from cicdllm_assets.llm.base import CircuitOpenError, GenerationResult, LLMBackend
from tests.openai_helpers import make_backend, make_request


def run_all(backend, requests) -> list[GenerationResult]:
    return list(backend.generate(requests))


def test_backend_satisfies_protocol() -> None:
    with FaultServer() as srv, make_backend(srv.base_url) as backend:
        assert isinstance(backend, LLMBackend)
        assert backend.model_id == "test-model"


def test_success_sends_sampling_params_and_parses_usage() -> None:
    with FaultServer() as srv, make_backend(srv.base_url) as backend:
        [result] = run_all(backend, [make_request("k1", max_tokens=50)])
        assert result.ok, result.error
        assert result.key == "k1"
        questions = json.loads(result.text)
        assert len(questions) == 2 and all("`add`" in q for q in questions)
        assert result.prompt_tokens > 0 and result.completion_tokens > 0
        assert result.finish_reason == "stop"
        assert result.extra["attempts"] == 1
        body = srv.chat_records[0].body
        assert body is not None
        assert body["model"] == "test-model"
        assert (body["seed"], body["temperature"], body["top_p"], body["max_tokens"]) == (7, 0.0, 1.0, 50)
        assert [m["role"] for m in body["messages"]] == ["system", "user", "user"]
        assert srv.request_count == 1


@pytest.mark.parametrize(
    "fault",
    [
        Fault.http(500, times=2),
        Fault.http(503, times=2),
        Fault.http(408, times=2),
        Fault.rate_limited(retry_after=0, times=2),
        Fault.malformed(times=2),
        Fault.truncated(times=2),
        Fault.drop(times=2),
    ],
    ids=["500", "503", "408", "429", "malformed", "truncated", "drop"],
)
def test_each_retryable_fault_recovers(fault: Fault) -> None:
    with FaultServer(faults=[fault]) as srv, make_backend(srv.base_url, max_retries=3) as backend:
        [result] = run_all(backend, [make_request("k")])
        assert result.ok, result.error
        assert result.extra["attempts"] == 3
        assert srv.request_count == 3
        assert [r.fault for r in srv.chat_records] == [fault.kind, fault.kind, None]


def test_timeout_is_retried() -> None:
    with (
        FaultServer(faults=[Fault.slow(10.0, times=1)]) as srv,
        make_backend(srv.base_url, timeout_seconds=1.0) as backend,
    ):
        [result] = run_all(backend, [make_request("k")])
        assert result.ok, result.error
        assert srv.request_count == 2


@pytest.mark.parametrize(
    ("fault", "category"),
    [
        (Fault.http(500, times=None), "http_status"),
        (Fault.malformed(times=None), "parse_error"),
        (Fault.truncated(times=None), "parse_error"),
        (Fault.drop(times=None), "connection"),
        (Fault.slow(5.0, times=None), "timeout"),
    ],
    ids=["500", "malformed", "truncated", "drop", "timeout"],
)
def test_exhausted_retries_report_category(fault: Fault, category: str) -> None:
    timeout = 0.5 if fault.kind == "slow" else 10.0
    with (
        FaultServer(faults=[fault]) as srv,
        make_backend(srv.base_url, max_retries=2, timeout_seconds=timeout) as backend,
    ):
        [result] = run_all(backend, [make_request("k")])
        assert not result.ok
        assert result.error is not None and result.error.category == category
        assert srv.request_count == 3
        if category == "http_status":
            assert result.error.status_code == 500


def test_connection_refused_is_connection_error() -> None:
    with FaultServer() as srv:
        url = srv.base_url
    with make_backend(url, max_retries=1) as backend:
        [result] = run_all(backend, [make_request("k")])
    assert result.error is not None and result.error.category == "connection"


def test_retry_after_seconds_is_honoured() -> None:
    with (
        FaultServer(faults=[Fault.rate_limited(retry_after=1, times=1)]) as srv,
        make_backend(srv.base_url, backoff_max_seconds=30.0) as backend,
    ):
        [result] = run_all(backend, [make_request("k")])
        assert result.ok, result.error
        first, second = srv.chat_records
        assert first.status == 429
        assert second.received_at - first.received_at >= 0.9


def test_retry_after_http_date_is_honoured() -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    with (
        FaultServer(faults=[Fault.rate_limited(retry_after=when, times=1)]) as srv,
        make_backend(srv.base_url, backoff_max_seconds=30.0) as backend,
    ):
        [result] = run_all(backend, [make_request("k")])
        assert result.ok, result.error
        first, second = srv.chat_records
        assert second.received_at - first.received_at >= 0.5  # HTTP dates have 1 s resolution


def test_retry_after_is_capped_at_backoff_max() -> None:
    with (
        FaultServer(faults=[Fault.rate_limited(retry_after=3600, times=1)]) as srv,
        make_backend(srv.base_url, backoff_max_seconds=0.2) as backend,
    ):
        [result] = run_all(backend, [make_request("k")])
        assert result.ok, result.error
        first, second = srv.chat_records
        assert second.received_at - first.received_at < 30


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_non_retryable_4xx_fails_at_once(status: int) -> None:
    with FaultServer(faults=[Fault.http(status, times=None)]) as srv, make_backend(srv.base_url) as backend:
        [result] = run_all(backend, [make_request("k")])
        assert result.error is not None
        assert result.error.category == "http_status"
        assert result.error.status_code == status
        assert result.error.retryable is False
        assert srv.request_count == 1


def test_context_overflow_is_classified() -> None:
    with FaultServer(faults=[Fault.context_overflow(times=None)]) as srv, make_backend(srv.base_url) as backend:
        [result] = run_all(backend, [make_request("k")])
        assert result.error is not None
        assert result.error.category == "context_overflow"
        assert result.error.status_code == 400
        assert "maximum context length" in result.error.message
        assert srv.request_count == 1


def test_circuit_breaker_opens_and_stops_sending() -> None:
    with (
        FaultServer(faults=[Fault.http(500, times=None)]) as srv,
        make_backend(srv.base_url, max_retries=1, circuit_breaker_failures=3, max_concurrency=1) as backend,
    ):
        results: list[GenerationResult] = []
        with pytest.raises(CircuitOpenError) as excinfo:
            for result in backend.generate([make_request(f"k{i}") for i in range(10)]):
                results.append(result)
        message = str(excinfo.value)
        assert f"model server {srv.base_url} failed 3 times in a row" in message
        assert "HTTP 500" in message and "re-run to resume" in message
        categories = [r.error.category for r in results if r.error is not None]
        assert len(results) == 10
        assert categories.count("http_status") == 3
        assert categories.count("circuit_open") == 7
        assert srv.request_count == 3 * 2  # 3 requests x (1 try + 1 retry), then nothing
        assert backend.circuit_open

        # Later calls send nothing and fail fast, still yielding every request.
        later: list[GenerationResult] = []
        with pytest.raises(CircuitOpenError):
            later.extend(backend.generate([make_request("again")]))
        assert [r.error.category for r in later if r.error] == ["circuit_open"]
        assert srv.request_count == 6


def test_breaker_counts_across_calls_and_resets_on_success() -> None:
    with (
        FaultServer(faults=[Fault.http(500, times=2)]) as srv,
        make_backend(srv.base_url, max_retries=0, circuit_breaker_failures=3, max_concurrency=1) as backend,
    ):
        first = run_all(backend, [make_request("a"), make_request("b")])
        assert all(not r.ok for r in first)
        second = run_all(backend, [make_request("c"), make_request("d")])
        assert all(r.ok for r in second)
        assert not backend.circuit_open
        assert srv.request_count == 4


def test_context_overflow_does_not_trip_breaker() -> None:
    with (
        FaultServer(faults=[Fault.context_overflow(times=None)]) as srv,
        make_backend(srv.base_url, circuit_breaker_failures=2, max_concurrency=1) as backend,
    ):
        results = run_all(backend, [make_request(f"k{i}") for i in range(4)])
        assert [r.error.category for r in results if r.error] == ["context_overflow"] * 4
        assert not backend.circuit_open


def test_concurrency_bound_respected_with_retries() -> None:
    faults = [Fault.http(500, times=6), Fault.drop(times=3)]
    with (
        FaultServer(faults=faults, latency=0.05) as srv,
        make_backend(srv.base_url, max_concurrency=3, adaptive_concurrency=False) as backend,
    ):
        results = run_all(backend, [make_request(f"k{i}") for i in range(20)])
        assert all(r.ok for r in results)
        assert len({r.key for r in results}) == 20
        assert srv.max_in_flight <= 3
        assert srv.max_in_flight >= 2
        assert srv.request_count == 20 + 9


def test_concurrency_bound_shared_by_threads() -> None:
    with FaultServer(latency=0.05) as srv, make_backend(srv.base_url, max_concurrency=2) as backend:
        outputs: list[list[GenerationResult]] = [[], [], []]

        def worker(i: int) -> None:
            outputs[i] = run_all(backend, [make_request(f"t{i}-{j}") for j in range(5)])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert all(len(out) == 5 and all(r.ok for r in out) for out in outputs)
        assert srv.max_in_flight <= 2


def test_generate_works_inside_a_running_event_loop() -> None:
    with FaultServer() as srv, make_backend(srv.base_url) as backend:

        async def caller() -> list[GenerationResult]:
            return run_all(backend, [make_request("k1"), make_request("k2")])

        results = asyncio.run(caller())
        assert sorted(r.key for r in results) == ["k1", "k2"]
        assert all(r.ok for r in results)


def test_results_are_yielded_as_they_complete() -> None:
    faults = [Fault.slow(1.5, times=1, match="[slow]")]
    with (
        FaultServer(faults=faults) as srv,
        make_backend(srv.base_url, max_concurrency=4, adaptive_concurrency=False) as backend,
    ):
        requests = [make_request("slow"), make_request("f1"), make_request("f2"), make_request("f3")]
        order = [r.key for r in backend.generate(requests)]
        assert sorted(order) == ["f1", "f2", "f3", "slow"]
        assert order[-1] == "slow"


def test_closing_the_iterator_early_cancels_the_rest() -> None:
    with FaultServer(latency=0.3) as srv, make_backend(srv.base_url, max_concurrency=2) as backend:
        iterator = backend.generate([make_request(f"k{i}") for i in range(20)])
        first = next(iterator)
        assert first.ok
        iterator.close()  # type: ignore[attr-defined]
        time.sleep(0.5)
        sent = srv.request_count
        time.sleep(1.0)  # uncancelled, 2 more requests would start every 0.3 s
        # The first + max_concurrency admitted as it ended (5+ without cancellation), and nothing
        # is sent after close().
        assert srv.request_count == sent <= 3


def test_missing_usage_is_estimated_or_zero() -> None:
    with FaultServer(include_usage=False) as srv, make_backend(srv.base_url) as backend:
        [result] = run_all(backend, [make_request("k")])
        assert result.ok
        assert (result.prompt_tokens, result.completion_tokens) == (0, 0)
        assert result.extra["usage_estimated"] is False


def test_api_key_is_sent_and_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-test-SECRET-4242"
    caplog.set_level(logging.DEBUG)
    faults = [Fault.http(500, times=1), Fault.http(401, times=1), Fault.drop(times=1)]
    with FaultServer(faults=faults) as srv, make_backend(srv.base_url, api_key=secret, max_concurrency=1) as backend:
        results = run_all(backend, [make_request("a"), make_request("b"), make_request("c")])
        assert sum(1 for r in results if r.ok) == 2
        auth = {r.headers.get("Authorization") for r in srv.chat_records}
        assert auth == {f"Bearer {secret}"}
        assert secret not in repr(backend) and secret not in repr(backend.config)
    assert caplog.records, "expected the retries to be logged"
    assert secret not in caplog.text
    for record in caplog.records:
        assert secret not in record.getMessage()


def test_api_key_echoed_by_server_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-echoed-9999"
    caplog.set_level(logging.DEBUG)
    fault = Fault.http(403, times=1, body=json.dumps({"error": {"message": f"bad key Bearer {secret}"}}))
    with FaultServer(faults=[fault]) as srv, make_backend(srv.base_url, api_key=secret) as backend:
        [result] = run_all(backend, [make_request("k")])
    assert result.error is not None and result.error.status_code == 403
    assert secret not in result.error.message and "***" in result.error.message
    assert secret not in caplog.text


def test_no_authorization_header_without_key() -> None:
    with FaultServer() as srv, make_backend(srv.base_url, api_key=None) as backend:
        run_all(backend, [make_request("k")])
        assert "Authorization" not in srv.chat_records[0].headers


def test_closed_backend_refuses_work() -> None:
    with FaultServer() as srv:
        backend = make_backend(srv.base_url)
        run_all(backend, [make_request("k")])
        backend.close()
        backend.close()
        with pytest.raises(RuntimeError, match="closed"):
            run_all(backend, [make_request("k2")])


def test_connections_are_pooled_and_kept_alive() -> None:
    with FaultServer(latency=0.02) as srv, make_backend(srv.base_url, max_concurrency=2) as backend:
        first = run_all(backend, [make_request(f"a{i}") for i in range(10)])
        second = run_all(backend, [make_request(f"b{i}") for i in range(10)])
        assert all(r.ok for r in first + second)
        connections = {r.client_port for r in srv.chat_records}
        assert 1 <= len(connections) <= 2


def test_close_during_generate_does_not_hang() -> None:
    with FaultServer(latency=0.5) as srv:
        backend = make_backend(srv.base_url, max_concurrency=2)
        closer = threading.Timer(0.2, backend.close)
        closer.start()
        with pytest.raises(RuntimeError, match="cancelled"):
            list(backend.generate([make_request(f"k{i}") for i in range(6)]))
        closer.join()


def test_requests_added_to_a_feed_are_sent_in_the_same_call() -> None:
    """A request the caller adds to the feed while results stream (the engine's retry of an
    unusable reply) goes out at once, next to those still running, in the same call."""
    from cicdllm_assets.llm.base import RequestFeed

    with FaultServer() as srv, make_backend(srv.base_url) as backend:
        feed = RequestFeed([make_request("k1"), make_request("k2")])
        results = []
        for result in backend.generate(feed):
            results.append(result)
            if len(results) == 1:
                feed.add(make_request("late"))
        assert sorted(r.key for r in results) == ["k1", "k2", "late"]
        assert all(r.ok for r in results)
        assert srv.request_count == 3 and len(feed) == 0
