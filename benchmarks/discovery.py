"""Benchmark discovery + chunking against bare ``tokenizers`` encoding of the same files.

    python benchmarks/discovery.py REPO_PATH [--tokenizer tokenizer.json] [--budget 512] [--project-config]

Runs the source_files work (list, filter, decode, tokenize, plan) and the code_chunks work
(read kept blobs, plan from cache, slice) on REPO_PATH's HEAD: cold (empty cache) and warm
(same cache, fresh process-level LRU), and times one bare ``Tokenizer.encode_batch`` over the
kept files' texts. The timed runs include secret redaction of every chunk, as the
code_chunks asset always does (``--no-redact`` leaves it out, for comparison). Prints
files/s, MB/s and the ratios cold/bare (target <= 1.5) and warm/bare (target <= 0.1); exits
1 when a ratio misses its target (``--target-cold`` / ``--target-warm`` override them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from cicdllm_assets.chunking.build import build_chunks, kept_in_chunk_order
from cicdllm_assets.chunking.cache import PlanCache
from cicdllm_assets.chunking.redaction_cache import RedactionCache
from cicdllm_assets.chunking.rows import ChunkRowBuilder
from cicdllm_assets.chunking.service import Chunker
from cicdllm_assets.config import ConfigError, load_settings
from cicdllm_assets.config.models import ProcessingConfig
from cicdllm_assets.discovery.discover import Discovery
from cicdllm_assets.discovery.table import source_files_table
from cicdllm_assets.discovery.verdicts import VerdictCache
from cicdllm_assets.llm.models.paths import EMBEDDED_DIR_NAME, ModelNotPreparedError, resolve_tokenizer_path
from cicdllm_assets.llm.tokenizer_counter import TokenCounter
from cicdllm_assets.quality.secrets import redact_secrets
from cicdllm_assets.sources.content import decode_with
from cicdllm_assets.sources.git import BlobReader, resolve_commit
from cicdllm_assets.storage.state import StateStore

TARGET_COLD = 1.5
TARGET_WARM = 0.1


@dataclass
class Run:
    """One timed pipeline run."""

    seconds: float
    cpu_seconds: float
    discovery_seconds: float
    chunks_seconds: float
    files_total: int
    files_kept: int
    bytes_kept: int
    tokens: int
    chunks: int
    cache_hits: int
    cache_misses: int
    tokenizer_calls: int


def find_tokenizer(explicit: str | None) -> Path:
    """--tokenizer, else the project's configured tokenizer, else the embedded model's."""
    if explicit:
        return Path(explicit)
    try:
        return resolve_tokenizer_path(load_settings().model_paths)
    except (ConfigError, ModelNotPreparedError) as exc:
        fallback = Path(".cicdllm/models") / EMBEDDED_DIR_NAME / "tokenizer.json"
        if fallback.is_file():
            return fallback
        raise SystemExit(f"no tokenizer: {exc}\n(run `cicdllm model prepare` or pass --tokenizer PATH)") from None


def run_pipeline(
    repo: Path, commit: str, processing: ProcessingConfig, tokenizer: Path, state_db: Path, redact: bool
) -> Run:
    """source_files work then code_chunks work, as the two assets do them."""
    counter = TokenCounter(tokenizer)
    state = StateStore(state_db)
    cache = PlanCache(state, lru_size=256)
    cpu = time.process_time()
    start = time.perf_counter()
    chunker = Chunker(counter, processing.chunk_max_tokens, cache)
    discovery = Discovery(repo, commit, processing, chunker, verdicts=VerdictCache(state, processing.skip_generated))
    files = discovery.run()
    table = source_files_table("bench", commit, files)
    middle = time.perf_counter()
    chunker.close()
    chunker = Chunker(counter, processing.chunk_max_tokens, cache)  # as a separate step would
    builder = ChunkRowBuilder(
        "bench",
        commit,
        None,
        chunker.budget,
        counter,
        redact_secrets if redact else None,
        redaction_cache=RedactionCache(state) if redact else None,
    )
    build_chunks(repo, kept_in_chunk_order(table.to_pylist()), chunker, builder)
    builder.table()
    end = time.perf_counter()
    chunker.close()
    stats = discovery.stats
    planned = discovery.chunker.stats if discovery.chunker else None
    return Run(
        seconds=end - start,
        cpu_seconds=time.process_time() - cpu,
        discovery_seconds=middle - start,
        chunks_seconds=end - middle,
        files_total=stats.files_total,
        files_kept=stats.files_kept,
        bytes_kept=stats.bytes_kept,
        tokens=stats.tokens,
        chunks=builder.stats.chunks,
        cache_hits=planned.cache_hits if planned else 0,
        cache_misses=planned.cache_misses if planned else 0,
        tokenizer_calls=counter.calls,
    )


def kept_texts(repo: Path, commit: str, processing: ProcessingConfig) -> list[str]:
    """Decoded texts of the files discovery keeps (no tokenizer involved)."""
    texts: list[str] = []
    for batch in Discovery(repo, commit, processing, None).iter_batches(keep_text=True):
        texts.extend(f.text for f in batch if f.text is not None)
    return texts


def bare_encode(tokenizer: Path, texts: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one bare encode_batch over ``texts`` with a fresh tokenizer."""
    tok = Tokenizer.from_file(str(tokenizer))
    cpu = time.process_time()
    start = time.perf_counter()
    tok.encode_batch(texts, add_special_tokens=False)
    return time.perf_counter() - start, time.process_time() - cpu


def redaction_seconds(repo: Path, commit: str, processing: ProcessingConfig, tokenizer: Path) -> tuple[float, int]:
    """Time redact_secrets over every chunk text (cache warm, so this is redaction only)."""
    with tempfile.TemporaryDirectory() as tmp:
        counter = TokenCounter(tokenizer)
        chunker = Chunker(counter, processing.chunk_max_tokens, PlanCache(StateStore(Path(tmp) / "s.db"), 100000))
        rows = source_files_table("bench", commit, Discovery(repo, commit, processing, chunker).run()).to_pylist()
        texts: list[tuple[str, str]] = []
        kept = kept_in_chunk_order(rows)
        plans = chunker.cached([(r["blob_sha"], r["language"]) for r in kept])
        with BlobReader(repo) as reader:
            for r in kept:
                plan = plans[chunker.key(r["blob_sha"], r["language"])]
                text = decode_with(reader.read(r["blob_sha"]), r["encoding"] or "utf-8")
                texts.extend((text[c.start_char : c.end_char], r["path"]) for c in plan.chunks)
        chunker.close()
    start = time.perf_counter()
    total = sum(redact_secrets(text, path).total for text, path in texts)
    return time.perf_counter() - start, total


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", type=Path, help="a git repository (its HEAD is benchmarked)")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: the configured/embedded model's)")
    parser.add_argument("--budget", type=int, default=None, help="chunk_max_tokens (default: 512)")
    parser.add_argument(
        "--project-config",
        action="store_true",
        help="use cicdllm.yaml's processing settings (default: ProcessingConfig defaults)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds of bare/cold/warm; medians are reported")
    parser.add_argument(
        "--no-redact",
        dest="redact",
        action="store_false",
        help="leave secret redaction out of the timed runs (the asset always redacts)",
    )
    parser.add_argument("--target-cold", type=float, default=TARGET_COLD, help="cold/bare target (default 1.5)")
    parser.add_argument("--target-warm", type=float, default=TARGET_WARM, help="warm/bare target (default 0.1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    tokenizer = find_tokenizer(args.tokenizer)
    processing = ProcessingConfig()  # defaults: reproducible whatever cicdllm.yaml holds today
    if args.project_config:
        try:
            processing = load_settings().config.processing
        except ConfigError as exc:
            raise SystemExit(f"cannot load the project config: {exc}") from None
    if args.budget:
        processing = processing.model_copy(update={"chunk_max_tokens": args.budget})
    repo = args.repo.resolve()
    commit = resolve_commit(repo, args.commit)
    texts = kept_texts(repo, commit, processing)
    # One-time process costs are not per-repo work (the bare side has tokenizers imported too):
    # the first pyarrow conversion imports pandas (~0.35 s), so pay for it before timing.
    source_files_table("warmup", commit, [])
    # Likewise the secret detector's plugins are imported and built once per process (~0.3 s).
    redact_secrets('password = "warm-up-1"', "warmup.py")
    # The machine may be shared: each round runs bare, cold and warm back to back, and the
    # median of the per-round ratios is reported (wall clock and process CPU time).
    rounds: list[tuple[tuple[float, float], Run, Run]] = []
    for _ in range(args.repeat):
        bare = bare_encode(tokenizer, texts)
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "state.db"
            cold = run_pipeline(repo, commit, processing, tokenizer, db, args.redact)
            warm = run_pipeline(repo, commit, processing, tokenizer, db, args.redact)
        rounds.append((bare, cold, warm))
    cold_ratios = [c.seconds / b[0] for b, c, _ in rounds]
    warm_ratios = [w.seconds / b[0] for b, _, w in rounds]
    cold_cpu_ratios = [c.cpu_seconds / b[1] for b, c, _ in rounds]
    warm_cpu_ratios = [w.cpu_seconds / b[1] for b, _, w in rounds]
    bare_s = statistics.median(b[0] for b, _, _ in rounds)
    cold = sorted((r[1] for r in rounds), key=lambda r: r.seconds)[len(rounds) // 2]
    warm = sorted((r[2] for r in rounds), key=lambda r: r.seconds)[len(rounds) // 2]
    redact_s, redactions = redaction_seconds(repo, commit, processing, tokenizer)
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    report: dict[str, Any] = {
        "repo": str(repo),
        "commit": commit,
        "tokenizer": str(tokenizer),
        "budget": processing.chunk_max_tokens,
        "rounds": args.repeat,
        "files_total": cold.files_total,
        "files_kept": cold.files_kept,
        "mb_kept": round(mb, 2),
        "tokens": cold.tokens,
        "chunks": cold.chunks,
        "bare_encode_s": round(bare_s, 3),
        "cold_s": round(cold.seconds, 3),
        "cold_discovery_s": round(cold.discovery_seconds, 3),
        "cold_chunks_s": round(cold.chunks_seconds, 3),
        "warm_s": round(warm.seconds, 3),
        "warm_discovery_s": round(warm.discovery_seconds, 3),
        "warm_chunks_s": round(warm.chunks_seconds, 3),
        "cold_ratio": round(statistics.median(cold_ratios), 3),
        "warm_ratio": round(statistics.median(warm_ratios), 3),
        "cold_ratios": [round(r, 3) for r in cold_ratios],
        "warm_ratios": [round(r, 3) for r in warm_ratios],
        "cold_cpu_ratio": round(statistics.median(cold_cpu_ratios), 3),
        "warm_cpu_ratio": round(statistics.median(warm_cpu_ratios), 3),
        "cold_files_per_s": round(cold.files_total / cold.seconds, 1),
        "warm_files_per_s": round(warm.files_total / warm.seconds, 1),
        "cold_mb_per_s": round(mb / cold.seconds, 2),
        "warm_mb_per_s": round(mb / warm.seconds, 2),
        "bare_mb_per_s": round(mb / bare_s, 2),
        "warm_tokenizer_calls": warm.tokenizer_calls,
        "warm_cache_hits": warm.cache_hits,
        "redaction_s": round(redact_s, 3),
        "redactions": redactions,
        "redaction_included": args.redact,
        "targets": {"cold_ratio": args.target_cold, "warm_ratio": args.target_warm},
    }
    report["cold_ok"] = report["cold_ratio"] <= args.target_cold
    report["warm_ok"] = report["warm_ratio"] <= args.target_warm
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        for key, value in report.items():
            sys.stdout.write(f"{key:>22}: {value}\n")
    return 0 if report["cold_ok"] and report["warm_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
