"""``cicdllm --config FILE``: the real CLI (click's CliRunner, in process) reads FILE, once per
invocation, hands it down to every command and child process, and leaves ``os.environ`` alone."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cicdllm_assets.cli import workers_cmd
from cicdllm_assets.cli.main import cli
from cicdllm_assets.config import loader

OTHER_REPO = "https://github.com/pallets/click@8.1.7"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def other(project: Path, tmp_path: Path) -> Path:
    """A second project whose config differs from the one $CICDLLM_CONFIG names (``project``)."""
    root = tmp_path / "other"
    root.mkdir()
    (root / "repos.txt").write_text(f"{OTHER_REPO}\n", encoding="utf-8")
    (root / "other.yaml").write_text(
        "storage:\n  data_dir: other-data\nui:\n  refresh_seconds: 7\n"
        "orchestration:\n  executor: celery\n  celery:\n    broker_url: amqp://other-broker//\n",
        encoding="utf-8",
    )
    return root


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Every config file parsed from now on; the per-process cache is off, so each load parses."""
    seen: list[Path] = []
    real = loader.read_yaml_mapping

    def counting(path: Path) -> dict[str, Any]:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(loader, "read_yaml_mapping", counting)
    monkeypatch.setattr(loader, "_CACHE_SIZE", 0)
    monkeypatch.setattr(loader, "_cache", type(loader._cache)())
    yield seen


def test_config_option_wins_over_the_environment_and_leaves_it_unchanged(
    project: Path, other: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_config = os.environ["CICDLLM_CONFIG"]
    assert env_config == str(project / "cicdllm.yaml")
    monkeypatch.chdir(other)

    shown = invoke("--config", "other.yaml", "config", "show", "--json")  # relative to the working dir
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert data["storage"]["data_dir"] == "other-data" and data["ui"]["refresh_seconds"] == 7
    assert os.environ["CICDLLM_CONFIG"] == env_config

    listed = invoke("--config", "other.yaml", "repos", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert [row["key"] for row in json.loads(listed.output)] == ["github.com-pallets-click@8.1.7"]
    assert os.environ["CICDLLM_CONFIG"] == env_config

    # without --config, the environment's config again (nothing leaked from the calls above)
    plain = invoke("config", "show", "--json")
    assert json.loads(plain.output)["storage"]["data_dir"] == "data"
    assert json.loads(invoke("repos", "list", "--json").output) == []


def test_each_command_parses_the_config_once(project: Path, other: Path, parses: list[Path]) -> None:
    config = other / "other.yaml"
    (other / "repos.txt").write_text("", encoding="utf-8")  # `run` stops before any run: nothing to run
    commands = [
        ["config", "show", "--json"],
        ["repos", "list", "--json"],
        ["retry-failed", "--json"],
        ["status", "--once", "--json", "--no-runs"],
        ["run", "--json"],  # builds the Dagster definitions, then: no repositories to run (exit 2)
    ]
    for args in commands:
        parses.clear()
        result = invoke("--config", str(config), *args)
        assert result.exit_code in (0, 2), (args, result.output)
        assert parses == [config], args
    assert "no repositories to run" in result.output


def test_child_processes_get_the_chosen_config_in_their_own_environment(
    project: Path, other: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``workers start`` passes --config to its workers through their ``env=``, not os.environ."""
    started: list[dict[str, str]] = []

    class FakeWorker:
        pid = 4242

        def __init__(self, argv: list[str], env: dict[str, str], **_: Any) -> None:
            started.append(env)

        def poll(self) -> int:
            return 0

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(workers_cmd.subprocess, "Popen", FakeWorker)
    monkeypatch.setattr(workers_cmd.signal, "signal", lambda *_: None)
    env_config = os.environ["CICDLLM_CONFIG"]
    result = invoke("--config", str(other / "other.yaml"), "workers", "start", "2")
    assert result.exit_code == 0, result.output
    assert "amqp://other-broker//" in result.output
    assert [env["CICDLLM_CONFIG"] for env in started] == [str(other / "other.yaml")] * 2
    assert os.environ["CICDLLM_CONFIG"] == env_config


def test_definitions_built_for_the_cli_carry_its_config(other: Path) -> None:
    """Resources of the CLI's code location read the --config file, whatever $CICDLLM_CONFIG says."""
    from cicdllm_assets.runner.cli_defs import definitions_for_cli

    settings = loader.load_settings(other / "other.yaml")
    defs = definitions_for_cli(settings)
    resources = defs.resources or {}
    assert {name: resources[name].config_path for name in ("app_config", "io_manager", "llm")} == dict.fromkeys(
        ("app_config", "io_manager", "llm"), str(other / "other.yaml")
    )
    assert defs.resolve_job_def("main_job").executor_def.name == "cicdllm_celery"  # other.yaml's executor


IMPORT_PROBE = """
import sys
from cicdllm_assets.config import loader
parsed = []
real = loader._load_settings
loader._load_settings = lambda *a, **k: parsed.append(a) or real(*a, **k)
import cicdllm_assets.code_location, cicdllm_assets.cli.main, cicdllm_assets.runner.cli_defs
print("at import:", len(parsed))
import cicdllm_assets.definitions
print("code location module:", len(parsed))
"""


def test_importing_the_code_reads_no_config(project: Path) -> None:
    """Jobs, schedules, sensors and assets read no config when imported (a fresh interpreter);
    the code location module loads it once."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], cwd=project, capture_output=True, text=True, check=True, timeout=300
    ).stdout
    assert out.splitlines() == ["at import: 0", "code location module: 1"]
