"""Export benchmark: synthetic pairs written in every format, Parquet vs DuckDB's COPY, memory.

    .venv/bin/python -m benchmarks.export                 # 1,000,000 rows
    .venv/bin/python -m benchmarks.export --rows 20000    # quick

1. Runs a child process per size in ``--memory-sizes`` that streams generated batches
   (never the whole table) into all formats in one pass and reports its peak RSS
   (``VmHWM``): flat peak memory across sizes shows the writers stream.
2. Builds an in-memory table of ``--rows`` synthetic export records (realistic text
   lengths, 20k distinct strings per text column, unique ids).
3. Times our streamed writer for each format separately (the file is deleted after),
   and DuckDB's own ``COPY t TO 'x.parquet'`` of the same table loaded into DuckDB,
   with the same codec (zstd) and with DuckDB's default codec; prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from cicdllm_assets.config.models import EXPORT_FORMATS
from cicdllm_assets.export.records import EXPORT_SCHEMA, SPLITS
from cicdllm_assets.export.writers import write_exports

DISTINCT = 20_000
BATCH_ROWS = 2_000
_WORD_TEXT = (
    "the function returns a list of parsed tokens from the input stream and raises ValueError when "
    "the buffer is empty so callers should check the cache before they retry the request with a "
    "larger window while the scheduler keeps every worker busy and commits each result to the ledger"
)
_WORDS = _WORD_TEXT.split()


def _pool(rng: np.random.Generator, count: int, words: int, code: bool = False) -> pa.Array:
    picks = rng.integers(0, len(_WORDS), size=(count, words))
    texts = []
    for i, row in enumerate(picks):
        body = " ".join(_WORDS[j] for j in row)
        if code:
            body = (f"def handler_{i}(request, cache):\n    # {body}\n"
                    f"    return cache.get(request.key, \"a, \\\"b\\\"\")\n")
        texts.append(body)
    return pa.array(texts, pa.string())


class Synthetic:
    """Deterministic synthetic export records, produced batch by batch."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.questions = _pool(rng, DISTINCT, 14)
        self.answers = _pool(rng, DISTINCT, 60)
        self.contexts = _pool(rng, DISTINCT, 40, code=True)
        self.themes = pa.array(["code_explanation", "usage_examples", "debugging", "testing"], pa.string())

    def batch(self, start: int, rows: int) -> pa.RecordBatch:
        """Rows ``start`` .. ``start + rows`` (ids and files unique per row range)."""
        idx = np.arange(start, start + rows)
        q = pa.array(self.rng.integers(0, DISTINCT, rows))
        a = pa.array(self.rng.integers(0, DISTINCT, rows))
        c = pa.array(self.rng.integers(0, DISTINCT, rows))
        question = self.questions.take(q)
        context = self.contexts.take(c)
        file_no = idx // 4
        split_codes = np.where(file_no % 10 < 8, 0, np.where(file_no % 10 == 8, 1, 2))
        ids = pa.array([f"{i:032x}" for i in idx], pa.string())
        paths = pa.array([f"src/pkg_{f % 997}/module_{f}.py" for f in file_no], pa.string())
        prompt = pa.array([f"{qq}\n\nFile: x.py (lines 1-4)\n```python\n{cc}```" for qq, cc in
                           zip(question.to_pylist(), context.to_pylist(), strict=True)], pa.string())
        const = {
            "repo": "acme/big", "commit": "c0ffee" * 6 + "abcd", "license": "MIT", "language": "python",
            "system": "You are an expert software engineer who answers questions about code.",
            "model_id": "SmolLM2-135M-Instruct", "template_hash": "3f2a9c0d1e", "params": '{"max_tokens": 256}',
        }
        columns = {
            "id": ids,
            "split": pa.array([SPLITS[s] for s in split_codes], pa.string()),
            "path": paths,
            "start_line": pa.array(np.ones(rows, dtype=np.int64)),
            "end_line": pa.array(np.full(rows, 4, dtype=np.int64)),
            "theme": self.themes.take(pa.array(idx % 4)),
            "question": question,
            "context": context,
            "prompt": prompt,
            "answer": self.answers.take(a),
            "question_id": ids,
            "chunk_key": ids,
        }
        arrays = [columns[name] if name in columns else pa.array([const[name]] * rows, pa.string())
                  for name in EXPORT_SCHEMA.names]
        return pa.RecordBatch.from_arrays(arrays, schema=EXPORT_SCHEMA)

    def batches(self, rows: int, size: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Stream ``rows`` rows in batches."""
        for start in range(0, rows, size):
            yield self.batch(start, min(size, rows - start))


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def time_formats(table: pa.Table, work: Path) -> dict[str, tuple[float, int]]:
    """Seconds and bytes per format, each written alone from the in-memory table."""
    results: dict[str, tuple[float, int]] = {}
    for fmt in EXPORT_FORMATS:
        out = work / f"ours-{fmt}"
        start = time.perf_counter()
        write_exports(table.to_batches(max_chunksize=BATCH_ROWS), [fmt], out)
        elapsed = time.perf_counter() - start
        results[fmt] = (elapsed, _dir_size(out))
        shutil.rmtree(out)
        print(f"  ours {fmt:16} {elapsed:8.2f} s  {results[fmt][1] / 1e6:9.1f} MB", flush=True)
    return results


def time_duckdb(table: pa.Table, work: Path) -> dict[str, tuple[float, int]]:
    """DuckDB COPY of the same table (loaded into DuckDB first) with zstd and its default codec."""
    con = duckdb.connect(":memory:")
    con.register("arrow_source", table)
    con.execute("CREATE TABLE t AS SELECT * FROM arrow_source")
    con.unregister("arrow_source")
    results: dict[str, tuple[float, int]] = {}
    for label, options in (("zstd", "(FORMAT parquet, COMPRESSION zstd)"), ("default", "(FORMAT parquet)")):
        target = work / f"duckdb-{label}.parquet"
        start = time.perf_counter()
        con.execute(f"COPY t TO '{target}' {options}")
        elapsed = time.perf_counter() - start
        results[label] = (elapsed, target.stat().st_size)
        target.unlink()
        print(f"  duckdb COPY ({label:7}) {elapsed:8.2f} s  {results[label][1] / 1e6:9.1f} MB", flush=True)
    con.close()
    return results


def peak_rss_mb() -> float:
    """This process's peak RSS in MB.

    Linux: ``VmHWM`` from /proc/self/status, which belongs to the process's own address
    space (``ru_maxrss`` is inherited across fork+exec, so a child would report its
    parent's peak). Elsewhere: ``ru_maxrss`` (KB on Linux, bytes on macOS).
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def child(rows: int, out: Path) -> None:
    """Stream ``rows`` synthetic rows into every format; print peak RSS as JSON."""
    synthetic = Synthetic(seed=1)
    baseline = peak_rss_mb()
    start = time.perf_counter()
    written = write_exports(synthetic.batches(rows), list(EXPORT_FORMATS), out)
    elapsed = time.perf_counter() - start
    print(json.dumps({
        "rows": rows, "seconds": elapsed, "peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": baseline,
        "files": len(written), "bytes": sum(f.bytes for f in written),
    }))


def memory_profile(sizes: list[int], work: Path) -> list[dict[str, float]]:
    """Run :func:`child` in a fresh process per size."""
    reports = []
    for rows in sizes:
        out = work / f"mem-{rows}"
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.export", "--child", "--rows", str(rows), "--out", str(out)],
            check=True, capture_output=True, text=True,
        )
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        shutil.rmtree(out, ignore_errors=True)
        reports.append(report)
        print(f"  {rows:>9} rows, all formats in one pass: {report['seconds']:7.1f} s, peak RSS "
              f"{report['peak_rss_mb']:7.1f} MB (after imports and set-up: {report['baseline_rss_mb']:.1f} MB; "
              f"{report['bytes'] / 1e6:,.0f} MB written)", flush=True)
    return reports


def main() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows for the timing run")
    parser.add_argument("--memory-sizes", default=None,
                        help="comma-separated row counts for the memory run (default: rows/10,rows)")
    parser.add_argument("--out", type=Path, default=None, help="work dir (default: a temp dir, removed after)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rows <= 0:
        parser.error("--rows must be positive")
    if args.child:
        child(args.rows, args.out)
        return
    sizes = ([int(s) for s in args.memory_sizes.split(",")] if args.memory_sizes
             else [max(1, args.rows // 10), args.rows])
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="cicdllm-export-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print("Peak memory (child process per size, streamed generation, all formats in one pass):", flush=True)
        reports = memory_profile(sizes, work)
        if len(reports) >= 2:
            growth = reports[-1]["peak_rss_mb"] / reports[0]["peak_rss_mb"]
            print(f"Peak RSS grows {growth:.2f}x for {sizes[-1] / sizes[0]:.0f}x the rows", flush=True)
        print(f"Generating {args.rows:,} synthetic pairs …", flush=True)
        table = pa.Table.from_batches(list(Synthetic(seed=0).batches(args.rows)), EXPORT_SCHEMA)
        print(f"  in-memory table: {table.nbytes / 1e6:,.0f} MB\nOur writers (each format alone):", flush=True)
        ours = time_formats(table, work)
        print("DuckDB:", flush=True)
        duck = time_duckdb(table, work)
        del table
        ratio = ours["parquet"][0] / duck["zstd"][0]
        ratio_default = ours["parquet"][0] / duck["default"][0]
        verdict = "within" if ratio <= 1.25 else "NOT within"
        print(f"Parquet: ours {ours['parquet'][0]:.2f} s vs DuckDB COPY zstd {duck['zstd'][0]:.2f} s -> "
              f"{ratio:.2f}x ({verdict} the 1.25x target); vs DuckDB default codec {ratio_default:.2f}x", flush=True)
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
