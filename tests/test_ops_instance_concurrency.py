"""Two ``cicdllm`` processes started at once on a fresh DAGSTER_HOME must not corrupt it.

Dagster creates and migrates the SQLite instance storage on first open; two processes doing
that together used to leave two alembic heads in history/runs.db (every later command then
failed) or die on "table ... already exists". Real processes, fresh homes, then each home used.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dagster import DagsterInstance

from cicdllm_assets.partitions import REPOS_PARTITIONS_NAME

PAIRS = 8
CLI = [sys.executable, "-c", "from cicdllm_assets.cli.main import cli; cli()"]


def _project(root: Path) -> dict[str, str]:
    root.mkdir(parents=True)
    (root / "repos.txt").write_text("", encoding="utf-8")
    (root / "cicdllm.yaml").write_text("storage:\n  data_dir: data\n  dagster_home: home\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CICDLLM_")}
    env.update(CICDLLM_CONFIG=str(root / "cicdllm.yaml"), DAGSTER_HOME=str(root / "home"))
    return env


def test_concurrent_first_use_of_fresh_homes(tmp_path: Path) -> None:
    envs = [_project(tmp_path / f"p{i}") for i in range(PAIRS)]
    procs = [
        (
            i,
            subprocess.Popen(
                [*CLI, "repos", "list", "--json"],
                env=env,
                cwd=tmp_path / f"p{i}",
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for i, env in enumerate(envs)
        for _ in range(2)
    ]
    failures = []
    for i, proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0 or out.strip() != "[]":
            failures.append(f"pair {i}: exit {proc.returncode}\n{err[-1500:]}")
    assert not failures, "\n".join(failures)

    for i in range(PAIRS):
        home = tmp_path / f"p{i}" / "home"
        with DagsterInstance.from_config(str(home)) as instance:
            instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, [f"repo-{i}"])
            assert list(instance.get_dynamic_partitions(REPOS_PARTITIONS_NAME)) == [f"repo-{i}"]
            assert instance.get_runs() == []
