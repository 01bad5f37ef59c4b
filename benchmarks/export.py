"""Export benchmark: peak memory of the real export path at two sizes, against DuckDB's COPY.

    .venv/bin/python -m benchmarks.export                          # 100,000 and 1,000,000 pairs
    .venv/bin/python -m benchmarks.export --sizes 2000,20000       # quick

For each size it writes synthetic ``qa_pairs`` partition files (4 repositories, realistic
text lengths, unique pairs plus a few exact and near duplicates and rejected rows) into a
fresh project, then runs, each in a fresh child process that reports its own peak RSS
(``VmHWM``, or ``ru_maxrss`` where there is no /proc):

* **ours**: ``cicdllm export`` (the real command, in process: licence filter, cross-repo
  dedup, secret re-scan, split, all 8 formats, card, manifest);
* **DuckDB COPY**: what a user would run instead, ``COPY (SELECT … FROM read_parquet(…)
  WHERE accepted) TO …`` into the same kinds of files: Parquet (zstd), CSV, JSON lines of
  the full records and JSON lines of chat messages — no dedup, no redaction, no split.

Target: our peak RSS at the largest size is at most 1.1x that at the smallest (the export
streams; memory does not grow with the pairs). Exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TARGET_GROWTH = 1.1
REPOS = ("acme/core", "acme/web", "tools/cli", "libs/net")
BATCH_ROWS = 10_000
VOCABULARY = 6_000


def _words(rng: np.random.Generator) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(3, 11, size=VOCABULARY)
    return ["".join(rng.choice(letters, size=n)) for n in lengths]


def _texts(rng: np.random.Generator, words: list[str], rows: int, length: int) -> list[str]:
    picks = rng.integers(0, len(words), size=(rows, length))
    return [" ".join(words[j] for j in row) for row in picks]


def write_qa_pairs(project: Path, pairs: int, seed: int = 0) -> None:
    """``pairs`` qa_pairs rows over :data:`REPOS` partitions, plus their repositories rows."""
    rng = np.random.default_rng(seed)
    words = _words(rng)
    tables = project / "data" / "tables"
    per_repo = -(-pairs // len(REPOS))
    for r, repo in enumerate(REPOS):
        rows = min(per_repo, pairs - r * per_repo)
        name = repo.replace("/", "%2F") + ".parquet"
        (tables / "repositories").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"repo": [repo], "license": ["MIT"]}), tables / "repositories" / name)
        (tables / "qa_pairs").mkdir(parents=True, exist_ok=True)
        writer: pq.ParquetWriter | None = None
        for start in range(0, rows, BATCH_ROWS):
            n = min(BATCH_ROWS, rows - start)
            idx = np.arange(start, start + n)
            chunk = idx // 4  # four pairs per chunk, three chunks per file
            questions = _texts(rng, words, n, 14)
            answers = _texts(rng, words, n, 60)
            contexts = [
                f"def handler_{c}(request, cache):\n    # {t}\n    return cache.get(request.key)\n"
                for c, t in zip(chunk, _texts(rng, words, n, 30), strict=True)
            ]
            # 1 % exact duplicates of the previous pair, 1 % near duplicates (one word changed)
            for i in range(1, n):
                roll = rng.random()
                if roll < 0.01:
                    questions[i], answers[i] = questions[i - 1], answers[i - 1]
                elif roll < 0.02:
                    questions[i] = questions[i - 1]
                    answers[i] = answers[i - 1].replace(" ", " x", 1)
            accepted = rng.random(n) > 0.1
            batch = pa.table(
                {
                    "repo": [repo] * n,
                    "answer_id": [f"{r:02d}{i:030x}" for i in idx],
                    "question_id": [f"q{r:02d}{i:030x}" for i in idx],
                    "chunk_key": [f"{r:02d}{c:030x}" for c in chunk],
                    "theme": [("code_explanation", "usage_examples", "debugging", "testing")[i % 4] for i in idx],
                    "template_hash": ["3f2a9c0d1e2b4a67"] * n,
                    "question": questions,
                    "answer": answers,
                    "model_id": ["SmolLM2-135M-Instruct"] * n,
                    "params": ['{"max_tokens": 256}'] * n,
                    "path": [f"src/pkg_{c % 97}/module_{c // 3}.py" for c in chunk],
                    "start_line": pa.array(1 + (chunk % 3) * 40, pa.int64()),
                    "end_line": pa.array(40 + (chunk % 3) * 40, pa.int64()),
                    "commit": ["c0ffee" * 6 + "abcd"] * n,
                    "license": ["MIT"] * n,
                    "language": ["python"] * n,
                    "context": contexts,
                    "accepted": pa.array(accepted),
                    "reject_reason": [None if ok else "too_short" for ok in accepted],
                    "reject_detail": [None] * n,
                }
            )
            if writer is None:
                writer = pq.ParquetWriter(tables / "qa_pairs" / name, batch.schema, compression="zstd")
            writer.write_table(batch)
        if writer is not None:
            writer.close()
    (project / "repos.txt").write_text("".join(f"file:///srv/{repo}\n" for repo in REPOS), encoding="utf-8")
    (project / "cicdllm.yaml").write_text("storage:\n  data_dir: data\n", encoding="utf-8")


def peak_rss_mb() -> float:
    """This process's peak RSS in MB (``VmHWM`` on Linux: the child's own, not inherited)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def child_ours(project: Path) -> None:
    """Run ``cicdllm export --all-partitions --json`` in this process; print figures as JSON."""
    from cicdllm_assets.cli.main import cli

    os.environ["CICDLLM_CONFIG"] = str(project / "cicdllm.yaml")
    os.chdir(project)
    baseline = peak_rss_mb()
    start = time.perf_counter()
    try:
        cli.main(["export", "--all-partitions", "--json"], standalone_mode=False)
    finally:
        sys.stdout.flush()
    print(
        json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": baseline})
    )


def child_duckdb(project: Path) -> None:
    """DuckDB's own COPY of the accepted pairs into Parquet, CSV, JSON records and chat JSON."""
    import duckdb

    out = project / "duckdb-out"
    out.mkdir(exist_ok=True)
    source = str(project / "data" / "tables" / "qa_pairs" / "*.parquet").replace("'", "''")
    accepted = f"SELECT * FROM read_parquet('{source}', union_by_name = true) WHERE accepted"  # noqa: S608
    messages = (
        "[{'role': 'user', 'content': question || chr(10) || chr(10) || context}, "
        "{'role': 'assistant', 'content': answer}]"
    )
    chat = f"SELECT {messages} AS messages FROM ({accepted})"  # noqa: S608 - constants and a quoted path
    baseline = peak_rss_mb()
    start = time.perf_counter()
    with duckdb.connect(":memory:") as con:
        for sql, target, options in (
            (accepted, "dataset.parquet", "FORMAT parquet, COMPRESSION zstd"),
            (accepted, "dataset.csv", "FORMAT csv, HEADER true"),
            (accepted, "dataset.jsonl", "FORMAT json"),
            (chat, "chat.jsonl", "FORMAT json"),
        ):
            con.execute(f"COPY ({sql}) TO '{out / target}' ({options})")
    print(
        json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": baseline})
    )


def _run_child(kind: str, project: Path) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.export", f"--child-{kind}", str(project)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} export failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    report: dict[str, float] = json.loads(lines[-1])
    if kind == "ours":
        summary = json.loads("\n".join(lines[:-1]))
        report["pairs"] = summary["pairs"]
        report["files"] = len(summary["files"])
    return report


def main() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated qa_pairs row counts")
    parser.add_argument("--out", type=Path, default=None, help="work dir (default: a temp dir, removed after)")
    parser.add_argument("--child-ours", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-duckdb", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_ours:
        child_ours(args.child_ours)
        return
    if args.child_duckdb:
        child_duckdb(args.child_duckdb)
        return
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if len(sizes) < 2 or min(sizes) <= 0:
        parser.error("--sizes needs two or more positive row counts")
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="cicdllm-export-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ours: list[dict[str, float]] = []
    try:
        for rows in sizes:
            project = work / f"project-{rows}"
            shutil.rmtree(project, ignore_errors=True)
            start = time.perf_counter()
            write_qa_pairs(project, rows)
            print(f"{rows:,} qa_pairs rows written in {time.perf_counter() - start:.0f} s", flush=True)
            mine = _run_child("ours", project)
            duck = _run_child("duckdb", project)
            ours.append(mine)
            print(
                f"  ours (cicdllm export, 8 formats): {mine['pairs']:>9,.0f} pairs, {mine['seconds']:7.1f} s, "
                f"peak RSS {mine['peak_rss_mb']:6.0f} MB (after imports {mine['baseline_rss_mb']:.0f} MB)",
                flush=True,
            )
            print(
                f"  DuckDB COPY (4 files):            {'':>9} {duck['seconds']:13.1f} s, "
                f"peak RSS {duck['peak_rss_mb']:6.0f} MB (after imports {duck['baseline_rss_mb']:.0f} MB)",
                flush=True,
            )
            print(
                f"  ours / DuckDB: time {mine['seconds'] / duck['seconds']:.1f}x, "
                f"peak RSS {mine['peak_rss_mb'] / duck['peak_rss_mb']:.2f}x",
                flush=True,
            )
            shutil.rmtree(project, ignore_errors=True)
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    growth = ours[-1]["peak_rss_mb"] / ours[0]["peak_rss_mb"]
    ok = growth <= TARGET_GROWTH
    print(
        f"Peak RSS of ours at {sizes[-1]:,} rows is {growth:.2f}x that at {sizes[0]:,} "
        f"({sizes[-1] / sizes[0]:.0f}x the rows; target <= {TARGET_GROWTH}x): {'OK' if ok else 'MISSED'}"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
