"""``cicdllm workers start N``: Celery workers for ``orchestration.executor: celery``.

Each worker is ``dagster-celery worker start`` (``celery -A dagster_celery.app worker``) with
the broker and result backend of ``orchestration.celery``, listening on this deployment's queue
(``celery_queue``), one step at a time (``--concurrency``). The command stays in the
foreground and stops its workers on Ctrl-C or SIGTERM. Run it on every worker machine, with
the same config, code and DAGSTER_HOME (a Postgres instance) as the webserver and daemon, and
the data dir on a path all share.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

import click
from ruamel.yaml import YAML

from cicdllm_assets.automation.executors import celery_app_config, celery_queue
from cicdllm_assets.cli.common import child_env, load_cli_settings
from cicdllm_assets.config import ConfigError, Settings

logger = logging.getLogger(__name__)

DEFINITIONS_MODULE = "cicdllm_assets.definitions"


def write_worker_config(settings: Settings) -> Path:
    """``<DAGSTER_HOME>/celery_workers.yaml``: the executor config the workers read (``-y``)."""
    from cicdllm_assets.runner.instance import ensure_dagster_home

    home = ensure_dagster_home(settings)
    path = home / "celery_workers.yaml"
    data = {"execution": {"config": celery_app_config(settings)}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        YAML(typ="safe").dump(data, handle)
    tmp.replace(path)
    return path


def worker_command(config_yaml: Path, queue: str, name: str, concurrency: int, loglevel: str = "INFO") -> list[str]:
    """The ``dagster-celery worker start`` command line of one worker on ``queue``."""
    return [
        str(Path(sys.executable).parent / "dagster-celery"),
        "worker",
        "start",
        "-A",
        "dagster_celery.app",
        "-y",
        str(config_yaml),
        "-q",
        queue,
        "-i",  # import the definitions once in the worker, before its pool forks: no import per step process
        DEFINITIONS_MODULE,
        "-n",
        name,
        "--loglevel",
        loglevel,
        "--",
        f"--concurrency={concurrency}",
        "--pool=prefork",
    ]


@click.group(name="workers")
def command() -> None:
    """Celery workers that execute pipeline steps (orchestration.executor: celery)."""


@command.command(name="start")
@click.argument("count", type=click.IntRange(min=1, max=256))
@click.option(
    "--concurrency",
    type=click.IntRange(min=1, max=64),
    default=1,
    show_default=True,
    help="Steps each worker runs at once.",
)
@click.option(
    "--name",
    default="cicdllm",
    show_default=True,
    help="Worker name prefix (NAME-1-QUEUE@host, ...; the queue keeps names unique on a shared broker).",
)
def start(count: int, concurrency: int, name: str) -> None:
    """Start COUNT workers in the foreground; Ctrl-C or SIGTERM stops them."""
    try:
        settings = load_cli_settings()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    orchestration = settings.config.orchestration
    if orchestration.executor != "celery":
        click.echo(
            f"orchestration.executor is {orchestration.executor!r}: runs will not send steps to workers"
            " (set it to celery)",
            err=True,
        )
    config_yaml = write_worker_config(settings)
    queue = celery_queue(settings)
    bin_dir = str(Path(sys.executable).parent)  # dagster-celery runs `celery` from PATH
    env = child_env(settings)  # the workers read the config this command was given
    env["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    procs = [
        subprocess.Popen(  # noqa: S603 - our own command line
            worker_command(config_yaml, queue, f"{name}-{i + 1}-{queue}", concurrency),
            env=env,
            start_new_session=True,
        )
        for i in range(count)
    ]
    click.echo(
        f"started {count} workers (pids {' '.join(str(p.pid) for p in procs)}) on {orchestration.celery.broker_url},"
        f" queue {queue}",
        err=True,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codes = [proc.wait() for proc in procs]
    sys.exit(0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1)
