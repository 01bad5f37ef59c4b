"""Adaptive concurrency for the OpenAI backend: requests in flight follow the server.

An AIMD limiter in the spirit of Netflix's concurrency-limits (TCP Vegas/Reno for RPCs):

- it starts at one request in flight and, while latency stays flat, grows by one per
  success (slow start, doubling per round trip) until latency rises halfway to the cut
  threshold or the first congestion signal, then by ``1 / limit`` per success (one
  request per round trip);
- a *drop* (timeout, 429, 5xx, connection error) halves the limit; a latency above the
  threshold ``tolerance`` x baseline (the lowest latency of the recent window) + a noise
  floor means requests queue in the server: the limit halves if that ends slow start
  (doubling overshoots by up to 2x), else it drops by one (Vegas-style: one queued
  request keeps the server busy, so the limit settles just above the server's capacity);
- one cut per congestion episode: only requests that started after the last cut can cut
  again, so a burst of timeouts from one overload halves the limit once, not eight times;
- the limit grows only while it is in use and always stays within ``[1, max_limit]``;
- a request that will be retried keeps a reservation while it backs off: new requests
  wait behind it, and its retry is admitted (``acquire(retry=True)``) only when a slot is
  free under the current, possibly lower, limit.

The latency sample is what queueing inflates: the time to the first token of a streamed
response (the time to the whole response when the server does not stream). With
``adaptive=False`` the limit is fixed at ``max_limit`` (a plain semaphore).

Used from one asyncio event loop only (the backend's loop thread); :meth:`snapshot` may be
read from any thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal

Signal = Literal["ok", "drop", "ignore"]


@dataclass(frozen=True)
class LimiterSnapshot:
    """The limiter's state for progress displays and metadata."""

    limit: int
    max_limit: int
    in_flight: int
    adaptive: bool
    latency_ms: float | None
    baseline_ms: float | None
    drops: int
    latency_cuts: int

    def as_dict(self) -> dict[str, object]:
        """Plain values (for JSON and Dagster metadata)."""
        return {
            "limit": self.limit,
            "max_limit": self.max_limit,
            "in_flight": self.in_flight,
            "adaptive": self.adaptive,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "baseline_ms": None if self.baseline_ms is None else round(self.baseline_ms, 1),
            "drops": self.drops,
            "latency_cuts": self.latency_cuts,
        }


class AdaptiveLimiter:
    """AIMD concurrency limit with a latency gradient; ``acquire`` waits for a free slot."""

    def __init__(
        self,
        max_limit: int,
        *,
        adaptive: bool = True,
        initial: int = 1,
        tolerance: float = 2.0,
        noise_floor_seconds: float = 0.05,
        drop_backoff: float = 0.5,
        window: int = 50,
    ) -> None:
        if max_limit < 1:
            raise ValueError(f"max_limit must be >= 1, got {max_limit}")
        self.max_limit = max_limit
        self.adaptive = adaptive
        self._limit = float(min(max(1, initial), max_limit) if adaptive else max_limit)
        self.tolerance = tolerance
        self.noise_floor = noise_floor_seconds
        self.drop_backoff = drop_backoff
        self.in_flight = 0
        self.reserved = 0
        self.drops = 0
        self.latency_cuts = 0
        self._slow_start = True
        self._last_cut = -1.0
        self._samples: deque[float] = deque(maxlen=window)
        self._ewma: float | None = None
        self._changed: asyncio.Condition | None = None

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        return max(1, int(self._limit))

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def acquire(self, retry: bool = False) -> float:
        """Wait until a request may be sent; returns its start time (pass it to :meth:`release`).

        ``retry=True`` claims the reservation :meth:`release` made with ``will_retry``."""
        changed = self._condition()
        async with changed:
            if retry:
                await changed.wait_for(lambda: self.in_flight < self.limit)
                self.reserved -= 1
            else:
                await changed.wait_for(lambda: self.in_flight + self.reserved < self.limit)
            self.in_flight += 1
        return time.monotonic()

    async def cancel_reservation(self) -> None:
        """Give up a reservation (the retry will not happen)."""
        self.reserved -= 1
        changed = self._condition()
        async with changed:
            changed.notify_all()

    async def release(
        self, started: float, signal: Signal, latency: float | None = None, *, will_retry: bool = False
    ) -> None:
        """Free the slot of a request started at ``started`` and adapt the limit to its outcome;
        ``will_retry`` keeps a reservation for the request's retry."""
        self.in_flight -= 1
        if will_retry:
            self.reserved += 1
        if self.adaptive:
            self._adapt(started, signal, latency)
        changed = self._condition()
        async with changed:
            changed.notify_all()

    def _cut(self, factor: float) -> None:
        self._limit = max(1.0, self._limit * factor)
        self._slow_start = False
        self._last_cut = time.monotonic()

    def _adapt(self, started: float, signal: Signal, latency: float | None) -> None:
        in_episode = started <= self._last_cut  # sent before the last cut: already accounted for
        if signal == "drop":
            self.drops += 1
            if not in_episode:
                self._cut(self.drop_backoff)
            return
        if signal != "ok" or latency is None:
            return
        self._samples.append(latency)
        self._ewma = latency if self._ewma is None else 0.8 * self._ewma + 0.2 * latency
        baseline = min(self._samples)
        threshold = self.tolerance * baseline + self.noise_floor
        if latency > threshold:
            if not in_episode:
                self.latency_cuts += 1
                self._cut(0.5 if self._slow_start else (self._limit - 1.0) / self._limit)
            return
        if self._slow_start and latency > (1 + self.tolerance) / 2 * baseline + self.noise_floor:
            self._slow_start = False  # latency starts to rise: grow gently from here
        if self.in_flight + 1 < self.limit:  # the limit was not in use: no evidence it can grow
            return
        self._limit = min(float(self.max_limit), self._limit + (1.0 if self._slow_start else 1.0 / self._limit))

    def snapshot(self) -> LimiterSnapshot:
        """The current limit, requests in flight and observed latency."""
        baseline = min(self._samples) if self._samples else None
        return LimiterSnapshot(
            limit=self.limit,
            max_limit=self.max_limit,
            in_flight=self.in_flight,
            adaptive=self.adaptive,
            latency_ms=None if self._ewma is None else self._ewma * 1000.0,
            baseline_ms=None if baseline is None else baseline * 1000.0,
            drops=self.drops,
            latency_cuts=self.latency_cuts,
        )
