"""Battery awareness with injected readings (the one thing that cannot run here: a battery)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cicdllm_assets.config import Settings
from cicdllm_assets.config.editor import set_value
from cicdllm_assets.performance.battery import (
    BatteryReading,
    battery_status,
    pause_while_on_low_battery,
    read_battery,
    should_pause,
)
from cicdllm_assets.status.collect import collect_status
from cicdllm_assets.storage.state import StateStore, open_state_readonly

ON_BATTERY_LOW = BatteryReading(10.0, False)
ON_BATTERY_LOWER = BatteryReading(9.0, False)
PLUGGED_LOW = BatteryReading(9.5, True)


def pause(settings: Settings, log: logging.Logger | None = None, **kwargs: Any) -> float:
    """:func:`pause_while_on_low_battery` with the sections and paths of ``settings`` (hot reload from its file)."""
    return pause_while_on_low_battery(
        settings.config.performance, settings.state_target, log, config_path=settings.path, **kwargs
    )


def sequence(*readings: BatteryReading | None) -> Callable[[], BatteryReading | None]:
    """A reader returning the given readings, then the last one forever."""
    items: Iterator[BatteryReading | None] = iter(readings)
    last: list[BatteryReading | None] = [None]

    def read() -> BatteryReading | None:
        last[0] = next(items, last[0])
        return last[0]

    return read


def test_pauses_on_battery_below_threshold_and_resumes_on_power(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    seen_paused: list[bool] = []

    def sleep(seconds: float) -> None:
        # while paused, another process (the viewer) sees the pause in the StateStore
        con = open_state_readonly(settings.state_db)
        assert con is not None
        seen_paused.append(battery_status(settings.config.performance, con, reader=lambda: ON_BATTERY_LOW).paused)
        con.close()
        assert seconds == settings.config.performance.battery_check_seconds

    log = logging.getLogger("test.battery")
    with caplog.at_level(logging.INFO, logger="test.battery"):
        waited = pause(settings, log, reader=sequence(ON_BATTERY_LOW, ON_BATTERY_LOWER, PLUGGED_LOW), sleep=sleep)
    assert seen_paused == [True, True]  # two checks while on battery, resumed on the third reading
    assert waited == 2 * settings.config.performance.battery_check_seconds
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("paused: on battery at 10%") for m in messages)
    assert any(m.startswith("resumed") and "mains power" in m for m in messages)
    events = [
        (row["level"], row["message"])
        for row in StateStore(settings.state_db).connection().execute("SELECT level, message FROM events ORDER BY id")
    ]
    assert events[0][0] == "WARNING" and "below 20%" in events[0][1]
    assert events[1][0] == "INFO" and events[1][1].startswith("resumed")
    # resumed: the viewer no longer shows a pause
    status = collect_status(settings, include_runs=False, battery_reader=lambda: PLUGGED_LOW)
    assert status.resources.battery.paused is False
    assert status.resources.battery.label == "10% on power"


def test_no_pause_cases(settings: Settings) -> None:
    def never(_: float) -> None:
        raise AssertionError("must not sleep")

    assert pause(settings, reader=lambda: None, sleep=never) == 0.0  # no battery
    assert pause(settings, reader=lambda: BatteryReading(5.0, True), sleep=never) == 0.0
    assert pause(settings, reader=lambda: BatteryReading(55.0, False), sleep=never) == 0.0
    assert not settings.state_db.exists()  # nothing recorded when nothing paused
    assert should_pause(BatteryReading(19.9, False), 20) and not should_pause(BatteryReading(20.0, False), 20)
    assert not should_pause(BatteryReading(5.0, None), 20)  # unknown power source: do not pause


def test_lowering_the_threshold_in_the_config_resumes(settings: Settings) -> None:
    assert settings.path is not None
    calls: list[float] = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 2:  # the user lowers the threshold while paused (hot reload)
            set_value(settings.path, "performance.battery_pause_percent", 5)

    waited = pause(settings, reader=lambda: BatteryReading(15.0, False), sleep=sleep)
    assert len(calls) == 2 and waited == 2 * settings.config.performance.battery_check_seconds


def test_viewer_shows_pause_label(settings: Settings) -> None:
    labels: list[str] = []

    def sleep(_: float) -> None:
        status = collect_status(settings, include_runs=False, battery_reader=lambda: BatteryReading(12.0, False))
        labels.append(status.resources.battery.label)
        assert status.to_dict()["resources"]["battery"]["paused"] is True

    pause(settings, reader=sequence(BatteryReading(12.0, False), PLUGGED_LOW), sleep=sleep)
    assert labels == ["12% on battery — paused: on battery below 20%"]


def _power_supply(root: Path, capacity: str, status: str, ac_online: str | None) -> None:
    """A Linux /sys/class/power_supply tree as the kernel writes it."""
    bat = root / "BAT0"
    bat.mkdir(parents=True)
    (bat / "capacity").write_text(f"{capacity}\n")
    (bat / "status").write_text(f"{status}\n")
    (bat / "energy_now").write_text("30000000\n")
    (bat / "energy_full").write_text("40000000\n")
    (bat / "power_now").write_text("10000000\n")
    if ac_online is not None:
        (root / "AC").mkdir()
        (root / "AC" / "online").write_text(f"{ac_online}\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads a Linux sysfs power_supply tree")
def test_real_sensor_path_reads_a_battery_through_psutil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil._pslinux as pslinux

    on_battery, plugged, none = tmp_path / "on_battery", tmp_path / "plugged", tmp_path / "none"
    _power_supply(on_battery, "75", "Discharging", "0")
    _power_supply(plugged, "75", "Charging", "1")
    none.mkdir()

    monkeypatch.setattr(pslinux, "POWER_SUPPLY_PATH", str(on_battery))
    assert read_battery() == BatteryReading(75.0, False, 3 * 3600.0)
    assert should_pause(read_battery(), 80.0) and not should_pause(read_battery(), 70.0)
    monkeypatch.setattr(pslinux, "POWER_SUPPLY_PATH", str(plugged))
    assert read_battery() == BatteryReading(75.0, True, None)  # unlimited time is not a number of seconds
    monkeypatch.setattr(pslinux, "POWER_SUPPLY_PATH", str(none))
    assert read_battery() is None
