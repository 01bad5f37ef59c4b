"""Scale-out benchmark: QA pairs per minute with 1 vs 2 Celery workers (docs/scale-out.md).

The cluster of tests/test_scale_cluster.py (tests/scale_cluster.py: Postgres state and Dagster
instance, dagster-webserver, dagster-daemon, ``cicdllm workers start 1`` per worker, RabbitMQ)
runs a backfill of ``--repos`` repos against the loopback fault server with a fixed latency,
so requests, not CPU, bound the run. ``llm_pool_limit`` 2 and ``max_parallel_repos`` = repos
let two workers run two generation steps at once. The same repos go through a fresh cluster
(fresh state schema, Dagster database, project) with 1 worker, then with 2; the figure is
pairs / the runs' window (first run start to last run end, from the runs' records): the time
the workers had the work. Backfill wall time is printed too; it adds the backfill daemon's fixed
30 s tick (Dagster's, not configurable) at both ends, the same with any number of workers.
Target: 2 workers >= 1.8x the pairs per minute of 1 worker, and both clusters write every pair
(repos x files x 2).

    .venv/bin/python benchmarks/scale.py [--repos 4 --files 12 --latency 6.0]

Needs the live services (Postgres 127.0.0.1:5432, RabbitMQ 127.0.0.1:5672).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fault_server import FaultServer
from tests.conftest import GitRepo
from tests.llm_fixtures import make_tiny_model_dir
from tests.scale_cluster import make_repos, running_cluster, write_cluster_config
from tests.services import RABBITMQ_URL, fresh_database, schema_url

TARGET_RATIO = 1.8
QUESTIONS_PER_CHUNK = 2
SERVER_LIFETIME = 4 * 3600.0
"""The loopback server stops itself after this (FaultServer's default, 600 s, ended it during the
second backfill at 8 s per request: every request failed to connect and that backfill wrote
almost no pairs)."""


@dataclass(frozen=True)
class Measurement:
    """One backfill on a cluster of ``workers`` workers."""

    workers: int
    pairs: int
    seconds: float
    first_run_start: float
    """Seconds from the launch to the first of the backfill's runs starting (daemon: queue, launch)."""
    last_run_end: float
    """Seconds from the launch to the last run ending (every pair written)."""

    @property
    def run_seconds(self) -> float:
        """From the first run starting to the last run ending: the time the workers had the work."""
        return self.last_run_end - self.first_run_start

    @property
    def per_minute(self) -> float:
        """QA pairs per minute of the runs' window (the figure the target applies to)."""
        return self.pairs * 60 / self.run_seconds

    @property
    def wall_per_minute(self) -> float:
        """QA pairs per minute of backfill wall time, the daemon's ticks included."""
        return self.pairs * 60 / self.seconds

    def describe(self) -> str:
        """Both figures and where the wall time went."""
        return (
            f"  {self.workers} worker(s): {self.pairs} pairs in {self.run_seconds:.1f} s of runs"
            f" = {self.per_minute:.1f} pairs/min (first run started at {self.first_run_start:.1f} s,"
            f" last run ended at {self.last_run_end:.1f} s; backfill wall time {self.seconds:.1f} s"
            f" = {self.wall_per_minute:.1f} pairs/min)"
        )


def run_window(backfill_id: str, launched: float) -> tuple[float, float]:
    """(first run start, last run end) of a backfill's runs, in seconds after ``launched`` (epoch)."""
    from dagster import DagsterInstance, RunsFilter

    with DagsterInstance.get() as instance:
        records = instance.get_run_records(RunsFilter(tags={"dagster/backfill": backfill_id}))
    starts = [r.start_time for r in records if r.start_time is not None]
    ends = [r.end_time for r in records if r.end_time is not None]
    if not starts or not ends:
        raise SystemExit(f"backfill {backfill_id}: no run start/end recorded")
    return min(starts) - launched, max(ends) - launched


def measure(root: Path, repos: list[GitRepo], tokenizer: Path, server_url: str, workers: int) -> Measurement:
    """A fresh cluster with ``workers`` workers; the backfill of every repo, timed."""
    from cicdllm_assets.config import load_settings
    from cicdllm_assets.storage.tables import TableStore

    project = root / f"workers{workers}"
    (project / "dagster_home").mkdir(parents=True)
    os.environ["CICDLLM_CONFIG"] = str(project / "cicdllm.yaml")
    os.environ["DAGSTER_HOME"] = str(project / "dagster_home")
    with fresh_database("scale_bench") as database, fresh_database("scale_bench_dagster") as dagster_url:
        write_cluster_config(
            project,
            server_url,
            tokenizer,
            schema_url(database, f"bench_{uuid.uuid4().hex[:8]}"),
            dagster_url,
            RABBITMQ_URL,
            performance={"llm_pool_limit": 2, "max_parallel_repos": len(repos), "lease_seconds": 60},
            generation={"questions_per_chunk": QUESTIONS_PER_CHUNK},
        )
        (project / "repos.txt").write_text("".join(f"{r.path}\n" for r in repos), encoding="utf-8")
        keys = [f"local-{r.path.name}" for r in repos]
        with running_cluster(project, root / f"logs{workers}", workers=workers) as cluster:
            launched, started = time.time(), time.monotonic()
            result = cluster.backfill(keys, timeout=1800)
            seconds = time.monotonic() - started
        if result["status"] != "COMPLETED_SUCCESS":
            raise SystemExit(f"backfill on {workers} worker(s) ended {result['status']}\n{cluster.tail_logs()}")
        first_start, last_end = run_window(result["backfill_id"], launched)
        pairs = TableStore(load_settings().tables_dir).read_all("qa_pairs", keys)
    if pairs is None:
        raise SystemExit(f"the backfill on {workers} worker(s) wrote no qa_pairs")
    return Measurement(workers, pairs.num_rows, seconds, first_start, last_end)


def main(argv: list[str] | None = None) -> int:
    """Run both clusters, print both figures and the ratio; exit 1 on a miss."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=4)
    parser.add_argument("--files", type=int, default=12, help="files (one chunk each) per repo")
    parser.add_argument("--latency", type=float, default=6.0, help="seconds per request at the server")
    args = parser.parse_args(argv)
    for name in [n for n in os.environ if n.startswith("CICDLLM_") and "__" in n]:
        del os.environ[name]
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    with tempfile.TemporaryDirectory(prefix="cicdllm-scale-") as tmp:
        root = Path(tmp)

        def factory(name: str, files: dict[str, str]) -> GitRepo:
            repo = GitRepo(root / "repos" / name)
            for relpath, content in files.items():
                repo.write(relpath, content)
            repo.commit("initial")
            return repo

        repos = make_repos(factory, args.repos, files=args.files)
        tokenizer = make_tiny_model_dir(root / "model")
        measured = []
        for workers in (1, 2):  # a fresh server per cluster, alive for as long as a slow backfill takes
            with FaultServer(latency=args.latency, capacity=64, max_lifetime=SERVER_LIFETIME) as server:
                measured.append(measure(root, repos, tokenizer, server.base_url, workers=workers))
        one, two = measured
    ratio = two.per_minute / one.per_minute
    print(
        f"scale-out: {args.repos} repos x {args.files} files, {args.latency:g} s per request, llm_pool_limit 2, "
        f"openai max_concurrency 2 per step"
    )
    for m in (one, two):
        print(m.describe())
    verdict = "ok" if ratio >= TARGET_RATIO else "MISSED"
    wall_ratio = two.wall_per_minute / one.wall_per_minute
    print(f"  2 workers / 1 worker = {ratio:.2f}x over the runs' window (target >= {TARGET_RATIO}x): {verdict}")
    print(f"  2 workers / 1 worker = {wall_ratio:.2f}x over backfill wall time (the daemon's 30 s ticks included)")
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    expected = args.repos * args.files * QUESTIONS_PER_CHUNK
    complete = one.pairs == two.pairs == expected
    if not complete:
        print(f"  MISSED: the clusters wrote {one.pairs} and {two.pairs} pairs, not {expected} each")
    return 0 if ratio >= TARGET_RATIO and complete else 1


if __name__ == "__main__":
    sys.exit(main())
