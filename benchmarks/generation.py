"""Generation benchmark on the embedded model (run `cicdllm model prepare` first).

    .venv/bin/python benchmarks/generation.py [--max-tokens 48] [--single 4] [--chunks 4] [--json]

Measures, in one run:

(a) decoding throughput (completion tokens/s, prefill included) of the MLX backend at
    batch 8 vs what a user would run instead: mlx-lm's own ``stream_generate``, one
    request at a time, on the same prompts, token budget and weights, both warmed up.
    Target: ratio >= 3.
(b) prompt tokens actually run through the model per QA pair, with vs without
    shared-prefix reuse, for the question+answer flow of the pipeline (one question
    request per chunk, then one answer request per question, all starting with the
    same system + code prefix). Target: ratio <= 0.5.
(c) the OpenAI backend's achieved/ideal request rate against a loopback server of
    fixed latency and capacity (benchmarks/openai_rate.py). Target: >= 0.9.

Also prints mlx's float32 matmul GFLOP/s with OpenBLAS vs the bundled reference BLAS.
Exits 1 when a measured target is missed.
The machine may be shared: figures are noisy; keep runs short.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# OpenBLAS must be loaded before anything imports mlx.
from cicdllm_assets.llm.openblas import (
    DISABLE_ENV,
    ensure_openblas,
    matmul_gflops,
    openblas_effective,
    openblas_threads,
)

ensure_openblas()

from cicdllm_assets.config import ConfigError, load_settings  # noqa: E402
from cicdllm_assets.llm.base import ChatMessage, GenerationRequest  # noqa: E402
from cicdllm_assets.llm.mlx_backend import MLXBackend, load_model, release_models  # noqa: E402
from cicdllm_assets.llm.models.paths import ModelNotPreparedError, embedded_model_dir  # noqa: E402

TARGET_BATCH_SPEEDUP = 3.0
TARGET_PREFIX_RATIO = 0.5
TARGET_OPENAI_RATIO = 0.9
ROOT = Path(__file__).resolve().parent.parent
SYSTEM = "You are a senior software engineer. You write precise questions and answers about source code."
STORY_TOPICS = ["a robot", "the sea", "a lost key", "a mountain", "a small town", "a library", "a clock", "winter"]
CODE_FILES = [
    "cicdllm_assets/llm/models/paths.py",
    "cicdllm_assets/llm/base.py",
    "cicdllm_assets/llm/models/prepare.py",
    "cicdllm_assets/llm/openblas.py",
    "cicdllm_assets/llm/models/gguf.py",
    "cicdllm_assets/llm/mlx_backend.py",
]


def reference_gflops() -> float | None:
    """Matmul GFLOP/s of the bundled reference BLAS, measured in a subprocess without OpenBLAS."""
    code = "from cicdllm_assets.llm.openblas import matmul_gflops; print(matmul_gflops(512, 5))"
    env = {**os.environ, DISABLE_ENV: "1"}
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=True
        )
        return float(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def _story_requests(n: int, max_tokens: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            key=f"story-{i}",
            messages=(ChatMessage("user", f"Write a long story about {STORY_TOPICS[i % len(STORY_TOPICS)]}."),),
            max_tokens=max_tokens,
            temperature=0.0,
        )
        for i in range(n)
    ]


def _mlx_lm_one_at_a_time(model: str, requests: list[GenerationRequest]) -> tuple[int, float]:
    """What a user would run instead of our batching: mlx-lm's own ``stream_generate``, one
    request after the other, on the same (chat-templated) prompts, token budgets and greedy
    sampling; warmed up like the batched side. Returns (completion tokens, seconds).
    """
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    loaded = load_model(model)  # the weights the backend decodes with (loaded once per process)
    sampler = make_sampler(temp=0.0)

    def run(request: GenerationRequest) -> int:
        prompt = loaded.tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in request.messages], add_generation_prompt=True
        )
        tokens = 0
        for response in stream_generate(
            loaded.model, loaded.tokenizer, prompt, max_tokens=request.max_tokens, sampler=sampler
        ):
            tokens = response.generation_tokens
        return tokens

    run(_story_requests(1, 4)[0])  # warm up, as the batched side is
    start = time.perf_counter()
    tokens = sum(run(request) for request in requests)
    return tokens, time.perf_counter() - start


def bench_batching(model: str, batch: int, single: int, max_tokens: int) -> dict[str, Any]:
    """(a) tokens/s of ``batch`` requests decoded together by our backend vs ``single`` of the
    same prompts decoded one at a time by mlx-lm's own ``stream_generate``."""
    batched = MLXBackend(model, batch_size=batch, prefix_reuse=False)
    list(batched.generate(_story_requests(1, 4)))  # load + warm up
    start = time.perf_counter()
    results = list(batched.generate(_story_requests(batch, max_tokens)))
    batched_s = time.perf_counter() - start
    batched_tokens = sum(r.completion_tokens for r in results)

    single_tokens, single_s = _mlx_lm_one_at_a_time(model, _story_requests(single, max_tokens))
    batched_tps = batched_tokens / batched_s
    single_tps = single_tokens / single_s
    return {
        "batch_size": batch,
        "batched_tokens": batched_tokens,
        "batched_seconds": batched_s,
        "batched_tokens_per_s": batched_tps,
        "single_requests": single,
        "single_baseline": "mlx_lm.generate.stream_generate, one request at a time",
        "single_tokens": single_tokens,
        "single_seconds": single_s,
        "single_tokens_per_s": single_tps,
        "speedup": batched_tps / single_tps if single_tps else 0.0,
        "errors": sum(1 for r in results if not r.ok),
    }


def _chunks(n: int, chars: int = 1800) -> list[tuple[str, str]]:
    chunks = []
    for rel in CODE_FILES[:n]:
        text = (ROOT / rel).read_text(encoding="utf-8")[:chars]
        chunks.append((rel, text))
    return chunks


def _qa_flow(backend: MLXBackend, chunks: list[tuple[str, str]], per_chunk: int, max_tokens: int) -> int:
    """Questions then answers as the pipeline sends them; returns the number of QA pairs."""

    def prefix(path: str, code: str) -> tuple[ChatMessage, ChatMessage]:
        return (
            ChatMessage("system", SYSTEM),
            ChatMessage("user", f"File: {path}\n\n```python\n{code}\n```"),
        )

    def request(key: str, path: str, code: str, instruction: str) -> GenerationRequest:
        return GenerationRequest(
            key=key,
            messages=(*prefix(path, code), ChatMessage("user", instruction)),
            max_tokens=max_tokens,
            temperature=0.0,
            prefix_messages=2,
        )

    questions = [
        request(f"q-{path}", path, code, f"Write {per_chunk} questions about this code.") for path, code in chunks
    ]
    list(backend.generate(questions))
    answers = [
        request(f"a-{path}-{i}", path, code, f"Answer question {i + 1} about this code briefly.")
        for path, code in chunks
        for i in range(per_chunk)
    ]
    list(backend.generate(answers))
    return len(answers)


def bench_prefix(model: str, n_chunks: int, per_chunk: int, batch: int) -> dict[str, Any]:
    """(b) prompt tokens processed per QA pair with vs without prefix reuse."""
    chunks = _chunks(n_chunks)
    release_models()  # no prefix caches from (a)
    plain = MLXBackend(model, batch_size=batch, prefix_reuse=False)
    pairs = _qa_flow(plain, chunks, per_chunk, max_tokens=4)
    release_models()
    reuse = MLXBackend(model, batch_size=batch, prefix_reuse=True)
    _qa_flow(reuse, chunks, per_chunk, max_tokens=4)
    without = plain.stats.processed_prompt_tokens / pairs
    with_reuse = reuse.stats.processed_prompt_tokens / pairs
    return {
        "chunks": len(chunks),
        "qa_pairs": pairs,
        "prompt_tokens_total": plain.stats.prompt_tokens,
        "processed_without_reuse_per_pair": without,
        "processed_with_reuse_per_pair": with_reuse,
        "ratio": with_reuse / without if without else 0.0,
    }


def bench_openai() -> dict[str, Any] | None:
    """(c) benchmarks/openai_rate.py's run_openai_rate_benchmark(), if present."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        module = importlib.import_module("benchmarks.openai_rate")
    except ImportError:
        return None
    runner = getattr(module, "run_openai_rate_benchmark", None)
    if runner is None:
        return None
    load = os.getloadavg()[0]  # (c) is wall-clock bound: the load while it runs is what matters
    result: dict[str, Any] = runner()
    result["load_average"] = load
    return result


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print a table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", help="model directory (default: the prepared embedded model)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--single", type=int, default=4, help="requests decoded one at a time")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--questions", type=int, default=2, help="questions (QA pairs) per chunk")
    parser.add_argument("--skip-openai", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)

    model = args.model
    if model is None:
        try:
            model = str(embedded_model_dir(load_settings()))
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if not (Path(model) / "config.json").is_file():
        print(f"error: {ModelNotPreparedError.__doc__} ({model})", file=sys.stderr)
        return 2

    report: dict[str, Any] = {
        "model": model,
        "openblas": {
            "loaded": openblas_effective(),
            "threads": openblas_threads(),
            "gflops": matmul_gflops(512, 5),
            "reference_gflops": reference_gflops(),
            "load_average": os.getloadavg()[0],
        },
    }
    report["batching"] = bench_batching(model, args.batch, args.single, args.max_tokens)
    report["prefix_reuse"] = bench_prefix(model, args.chunks, args.questions, args.batch)
    report["openai_rate"] = None if args.skip_openai else bench_openai()

    b, p, o = report["batching"], report["prefix_reuse"], report["openai_rate"]
    ok_a = b["speedup"] >= TARGET_BATCH_SPEEDUP
    ok_b = p["ratio"] <= TARGET_PREFIX_RATIO
    ok_c = o is None or float(o.get("ratio", 0.0)) >= TARGET_OPENAI_RATIO
    report["ok"] = ok_a and ok_b and ok_c
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    blas = report["openblas"]
    ref = blas["reference_gflops"]
    print(f"model: {model}")
    print(f"load average (1 min) at start: {blas['load_average']:.2f} on {os.cpu_count()} cores")
    print()
    print(f"{'measure':<52}{'value':>12}{'target':>10}  result")
    print("-" * 84)
    ratio_blas = blas["gflops"] / ref if ref else 0.0
    print(f"{'matmul GFLOP/s, OpenBLAS (threads=' + str(blas['threads']) + ')':<52}{blas['gflops']:>12.1f}")
    print(f"{'matmul GFLOP/s, reference BLAS':<52}{(ref or 0.0):>12.1f}")
    print(f"{'  OpenBLAS / reference':<52}{ratio_blas:>12.1f}x")
    print(f"{'(a) tokens/s, batch of ' + str(b['batch_size']):<52}{b['batched_tokens_per_s']:>12.1f}")
    print(f"{'(a) tokens/s, mlx-lm stream_generate one at a time':<52}{b['single_tokens_per_s']:>12.1f}")
    print(f"{'  batched / one at a time':<52}{b['speedup']:>11.2f}x{'>= 3':>10}  {_verdict(ok_a)}")
    print(f"{'(b) prompt tokens processed per QA pair, no reuse':<52}{p['processed_without_reuse_per_pair']:>12.1f}")
    print(f"{'(b) prompt tokens processed per QA pair, prefix reuse':<52}{p['processed_with_reuse_per_pair']:>12.1f}")
    print(f"{'  with / without':<52}{p['ratio']:>12.2f}{'<= 0.5':>10}  {_verdict(ok_b)}")
    if o is None:
        print("(c) openai request rate: not available (benchmarks/openai_rate.py missing or skipped)")
    else:
        ratio = float(o.get("ratio", 0.0))
        print(f"{'(c) openai achieved req/s':<52}{float(o.get('achieved_rps', 0.0)):>12.1f}")
        print(f"{'(c) openai ideal req/s':<52}{float(o.get('ideal_rps', 0.0)):>12.1f}")
        print(f"{'(c) load average (1 min) when (c) started':<52}{float(o.get('load_average', 0.0)):>12.2f}")
        print(f"{'(c) client CPU ms per request':<52}{float(o.get('process_cpu_ms_per_request', 0.0)):>12.2f}")
        print(f"{'  achieved / ideal':<52}{ratio:>12.2f}{'>= 0.9':>10}  {_verdict(ratio >= TARGET_OPENAI_RATIO)}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
