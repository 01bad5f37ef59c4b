"""Objects with a lifetime: :class:`Closing` (a context manager that closes on exit) and
:class:`BackgroundLoop` (a callback repeated in a daemon thread until stopped)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Self


class Closing:
    """Mixin: ``with obj:`` gives ``obj`` and calls its ``close()`` on exit."""

    def close(self) -> None:
        """Release what the object holds."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BackgroundLoop:
    """Calls ``tick`` every ``interval`` seconds in a daemon thread named ``name``, from :meth:`start`
    until :meth:`stop`; the first call comes one interval after the start. An exception from
    ``tick`` ends the loop: a tick catches what it means to survive."""

    def __init__(self, tick: Callable[[], object], interval: float, name: str) -> None:
        self.tick, self.interval, self.name = tick, interval, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        """True once :meth:`start` ran (even after :meth:`stop`)."""
        return self._thread is not None

    def start(self) -> None:
        """Start the thread (once: a stopped loop does not run again)."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def stop(self, timeout: float = 5) -> None:
        """End the loop, waiting up to ``timeout`` seconds for a tick under way to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
