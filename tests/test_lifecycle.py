"""Closing and BackgroundLoop."""

from __future__ import annotations

import threading

from cicdllm_assets.lifecycle import BackgroundLoop, Closing


def test_ticks_in_a_named_daemon_thread_until_stopped() -> None:
    ticked = threading.Event()
    threads: list[threading.Thread] = []

    def tick() -> None:
        threads.append(threading.current_thread())
        ticked.set()

    loop = BackgroundLoop(tick, 0.01, "test-loop")
    assert not loop.started
    loop.start()
    assert ticked.wait(5)
    loop.stop()
    count = len(threads)
    assert loop.started
    assert threads[0].name == "test-loop" and threads[0].daemon
    assert not threads[0].is_alive()
    ticked.clear()
    assert not ticked.wait(0.05)
    assert len(threads) == count


def test_the_first_tick_waits_one_interval_and_stop_without_start_is_harmless() -> None:
    calls: list[int] = []
    loop = BackgroundLoop(lambda: calls.append(1), 60, "test-idle")
    loop.stop()
    loop = BackgroundLoop(lambda: calls.append(1), 60, "test-idle")
    loop.start()
    loop.stop()
    assert calls == []


def test_closing_gives_the_object_and_closes_it_on_exit_even_on_error() -> None:
    class Resource(Closing):
        closed = 0

        def close(self) -> None:
            self.closed += 1

    resource = Resource()
    with resource as entered:
        assert entered is resource and resource.closed == 0
    assert resource.closed == 1
    try:
        with resource:
            raise KeyError("x")
    except KeyError:
        pass
    assert resource.closed == 2
