"""Battery awareness: pause long generation work while on battery below a threshold.

``pause_while_on_low_battery`` is called between items (batches) by the generation
stages. It blocks while the machine runs on battery below
``performance.battery_pause_percent``, re-checking every ``performance.battery_check_seconds``
and re-reading the config each time (so lowering the threshold resumes the run). The
pause is recorded in the StateStore (table ``battery_pauses``, one row per paused
process) and as events, so the status viewer in another process can show it. A machine
without a battery (desktop, server, container) never pauses.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from cicdllm_assets.config import ConfigError, load_settings
from cicdllm_assets.config.models import PerformanceConfig
from cicdllm_assets.errors import Log
from cicdllm_assets.storage.state import StateStore, upsert_sql

_logger = logging.getLogger(__name__)

BATTERY_DDL = """
CREATE TABLE IF NOT EXISTS battery_pauses (
    pid INTEGER PRIMARY KEY,
    paused INTEGER NOT NULL,
    percent REAL,
    power_plugged INTEGER,
    threshold INTEGER NOT NULL,
    since REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""
_PAUSE_COLUMNS = ("pid", "paused", "percent", "power_plugged", "threshold", "since", "updated_at")

#: A paused row not refreshed for this long (its process died) is ignored by the viewer.
STALE_AFTER_MIN_SECONDS = 120.0


@dataclass(frozen=True)
class BatteryReading:
    """One battery sample: charge percent, whether on mains power, and seconds left (if known)."""

    percent: float
    power_plugged: bool | None
    secs_left: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


BatteryReader = Callable[[], BatteryReading | None]


def read_battery() -> BatteryReading | None:
    """The current battery reading from psutil, or None when there is no battery."""
    sensors = getattr(psutil, "sensors_battery", None)
    if sensors is None:
        return None
    try:
        battery = sensors()
    except (OSError, RuntimeError, NotImplementedError):  # unsupported or unreadable sensor
        return None
    if battery is None:
        return None
    secs = battery.secsleft
    secs_left = float(secs) if isinstance(secs, int | float) and secs >= 0 else None
    return BatteryReading(float(battery.percent), battery.power_plugged, secs_left)


def should_pause(reading: BatteryReading | None, threshold_percent: float) -> bool:
    """True when on battery (not plugged in) below the threshold; never without a battery."""
    if reading is None:
        return False
    return reading.power_plugged is False and reading.percent < threshold_percent


def _state(state_target: str | Path) -> StateStore | None:
    try:
        store = StateStore(state_target)
        store.ensure("battery", BATTERY_DDL)
    except Exception as exc:  # the pause itself must not fail because state is unavailable
        _logger.warning("battery: cannot open state store: %s", exc)
        return None
    return store


def _record(store: StateStore | None, reading: BatteryReading | None, threshold: int, since: float) -> None:
    if store is None:
        return
    try:
        with store.transaction() as con:
            con.execute(
                upsert_sql("battery_pauses", _PAUSE_COLUMNS, ("pid",)),
                (
                    os.getpid(),
                    1,
                    None if reading is None else reading.percent,
                    None if reading is None or reading.power_plugged is None else int(reading.power_plugged),
                    threshold,
                    since,
                    time.time(),
                ),
            )
    except Exception as exc:
        _logger.warning("battery: cannot record pause state: %s", exc)


def _clear(store: StateStore | None) -> None:
    if store is None:
        return
    try:
        with store.transaction() as con:
            con.execute("DELETE FROM battery_pauses WHERE pid = ?", (os.getpid(),))
    except Exception as exc:
        _logger.warning("battery: cannot clear pause state: %s", exc)


def _event(store: StateStore | None, level: str, message: str, repo: str | None) -> None:
    if store is None:
        return
    try:
        store.log_event(level, message, repo=repo)
    except Exception as exc:
        _logger.warning("battery: cannot log event: %s", exc)


def _reload(performance: PerformanceConfig, config_path: Path | None) -> PerformanceConfig:
    """Re-read ``performance`` from ``config_path`` (hot reload); keep the old section if there is
    no file or it is now invalid."""
    if config_path is None:
        return performance
    try:
        return load_settings(config_path).config.performance
    except ConfigError as exc:
        _logger.warning("battery: keeping previous config, %s", exc)
        return performance


def pause_while_on_low_battery(
    performance: PerformanceConfig,
    state_target: str | Path,
    log: Log | None = None,
    reader: BatteryReader | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    repo: str | None = None,
    config_path: Path | None = None,
) -> float:
    """Block while on battery below ``performance.battery_pause_percent``; return seconds paused.

    Call it between items. While paused, ``performance`` is re-read from ``config_path`` (the
    config file, if any) on every check (hot reload). ``reader`` returns a :class:`BatteryReading`
    (or None: no battery); it defaults to psutil. Pause and resume are logged to ``log`` and to
    the state store at ``state_target`` (event + ``battery_pauses`` row read by the viewer).
    """
    log = log or _logger
    read = reader or read_battery
    reading = read()
    threshold = performance.battery_pause_percent
    if not should_pause(reading, threshold):
        return 0.0
    assert reading is not None  # noqa: S101 - should_pause guarantees it
    started = time.time()
    store = _state(state_target)
    message = (
        f"paused: on battery at {reading.percent:.0f}% (below {threshold}%); "
        "resumes on mains power or above the threshold"
    )
    log.warning(message)
    _event(store, "WARNING", message, repo)
    _record(store, reading, threshold, started)
    waited = 0.0
    try:
        while True:
            interval = performance.battery_check_seconds
            sleep(interval)
            waited += interval
            performance = _reload(performance, config_path)
            threshold = performance.battery_pause_percent
            reading = read()
            if not should_pause(reading, threshold):
                break
            _record(store, reading, threshold, started)
    finally:
        _clear(store)
    if reading is None:
        why = "battery no longer reported"
    elif reading.power_plugged:
        why = f"on mains power at {reading.percent:.0f}%"
    else:
        why = f"battery at {reading.percent:.0f}% (threshold {threshold}%)"
    message = f"resumed after {waited:.0f}s paused: {why}"
    log.info(message)
    _event(store, "INFO", message, repo)
    return waited


@dataclass(frozen=True)
class BatteryStatus:
    """What the viewer shows: the current reading and whether any run is paused on it."""

    reading: BatteryReading | None
    paused: bool
    threshold: int
    paused_since: float | None = None

    @property
    def label(self) -> str:
        """One line: 'no battery', '83% on power', '15% on battery — paused: on battery below 20%'."""
        if self.reading is None:
            text = "no battery"
        else:
            where = "on power" if self.reading.power_plugged else "on battery"
            text = f"{self.reading.percent:.0f}% {where}"
        if self.paused:
            text += f" — paused: on battery below {self.threshold}%"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "present": self.reading is not None,
            "percent": None if self.reading is None else self.reading.percent,
            "power_plugged": None if self.reading is None else self.reading.power_plugged,
            "secs_left": None if self.reading is None else self.reading.secs_left,
            "paused": self.paused,
            "paused_since": self.paused_since,
            "threshold": self.threshold,
            "label": self.label,
        }


def paused_since(store: StateStore, check_seconds: float, now: float | None = None) -> float | None:
    """Earliest start of a live pause in ``battery_pauses``, or None."""
    now = time.time() if now is None else now
    stale = max(STALE_AFTER_MIN_SECONDS, 3 * check_seconds)
    if "battery_pauses" not in store.tables():
        return None
    rows = store.query("SELECT MIN(since) FROM battery_pauses WHERE paused = 1 AND updated_at >= ?", (now - stale,))
    return None if not rows or rows[0][0] is None else float(rows[0][0])


def battery_status(
    perf: PerformanceConfig, store: StateStore | None = None, reader: BatteryReader | None = None
) -> BatteryStatus:
    """Current battery reading plus the pause state recorded by running processes."""
    reading = (reader or read_battery)()
    since: float | None = None
    if store is not None:
        try:
            since = paused_since(store, perf.battery_check_seconds)
        except Exception as exc:  # a locked or half-created db must not break the viewer
            _logger.debug("battery: cannot read pause state: %s", exc)
    return BatteryStatus(reading, since is not None, perf.battery_pause_percent, since)
