"""Generation benchmark on the embedded model (run `cicdllm model prepare` first).

    .venv/bin/python benchmarks/generation.py [--max-tokens 64] [--single 4] [--chunks 4] [--json]

Measures, in one run:

(a) generation throughput (completion tokens/s, prefill included, greedy) of the MLX
    backend as the pipeline uses it (``batch_size: auto``: as many requests as the
    width it picks, prefix reuse on) vs what a user would run instead, on the same
    prompts, token budget and weights, all warmed up: mlx-lm's own ``stream_generate``
    one request at a time (target: ours >= 5x), and, when ``make bench-anchors`` has
    built llama-cpp-python into .venv-anchors (or ``--anchor-python`` names an
    interpreter that imports ``llama_cpp``), llama.cpp on the embedded model's GGUF with
    the same thread count, one stream at a time (target: ours >= 2x its decode-only
    rate). Also checks that the peak RSS stays within the memory the width was chosen
    for (process RSS before the run + the width's memory budget).
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

TARGET_VS_MLX_LM = 5.0
TARGET_VS_LLAMA_CPP = 2.0
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

    # mlx-lm's own attention, SwiGLU and log-sum-exp: our CPU kernels act only inside our
    # backend's generation loop (cicdllm_assets.llm.cpu_kernels.inference_kernels)
    run(_story_requests(1, 4)[0])  # warm up, as the batched side is
    start = time.perf_counter()
    tokens = sum(run(request) for request in requests)
    return tokens, time.perf_counter() - start


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _peak_rss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def bench_ours(model: str, max_tokens: int, requests: int | None) -> dict[str, Any]:
    """(a) our backend as the pipeline builds it (automatic width, prefix reuse): as many
    requests as the width it picks for these prompts, decoded together."""
    backend = MLXBackend(model)
    list(backend.generate(_story_requests(2, 4)))  # load + warm up
    probe = _story_requests(len(STORY_TOPICS), max_tokens)
    longest = max(backend.count_prompt_tokens(r.messages) for r in probe) + max_tokens
    width = backend.width_for(longest)
    count = requests or width
    rss_before = _rss()
    start = time.perf_counter()
    results = list(backend.generate(_story_requests(count, max_tokens)))
    seconds = time.perf_counter() - start
    choice = backend.last_width
    tokens = sum(r.completion_tokens for r in results)
    return {
        "width": choice.width if choice else width,
        "width_choice": choice.describe() if choice else "fixed",
        "memory_budget": choice.memory_budget if choice else 0,
        "requests": count,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "rss_before": rss_before,
        "peak_rss": _peak_rss(),
        "errors": sum(1 for r in results if not r.ok),
    }


def bench_mlx_lm(model: str, single: int, max_tokens: int) -> dict[str, Any]:
    """(a) mlx-lm's own ``stream_generate``, one request at a time."""
    tokens, seconds = _mlx_lm_one_at_a_time(model, _story_requests(single, max_tokens))
    return {"requests": single, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def anchor_python(explicit: str | None) -> str | None:
    """The interpreter that imports llama_cpp: ``--anchor-python`` or .venv-anchors'."""
    candidate = explicit or str(ROOT / ".venv-anchors" / "bin" / "python")
    if not Path(candidate).exists():
        return None
    probe = subprocess.run([candidate, "-c", "import llama_cpp"], capture_output=True, timeout=120, check=False)
    return candidate if probe.returncode == 0 else None


def bench_llama_cpp(python: str, model: str, single: int, max_tokens: int, threads: int) -> dict[str, Any]:
    """(a) llama.cpp on the GGUF the embedded model was converted from, one stream at a time."""
    from cicdllm_assets.llm.models.prepare import find_embedded_gguf

    tokenizer = load_model(model).tokenizer
    prompts = [
        [
            int(t)
            for t in tokenizer.apply_chat_template(
                [{"role": m.role, "content": m.content} for m in r.messages], add_generation_prompt=True
            )
        ]
        for r in _story_requests(single, max_tokens)
    ]
    job = {"gguf": str(find_embedded_gguf()), "threads": threads, "max_tokens": max_tokens, "prompts": prompts}
    out = subprocess.run(
        [python, str(ROOT / "benchmarks" / "llama_anchor.py")],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["decode_tokens_per_s"] = result["decode_tokens"] / max(result["decode_seconds"], 1e-9)
    result["prefill_tokens_per_s"] = result["prefill_tokens"] / max(result["prefill_seconds"], 1e-9)
    total_s = result["prefill_seconds"] + result["decode_seconds"]
    result["tokens_per_s"] = result["completion_tokens"] / max(total_s, 1e-9)
    return result


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
    parser.add_argument("--batch", type=int, default=8, help="batch width of the prefix-reuse flow (b)")
    parser.add_argument("--requests", type=int, help="requests for our backend (default: the width it picks)")
    parser.add_argument("--single", type=int, default=4, help="requests decoded one at a time")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--anchor-python", help="interpreter with llama_cpp (default: .venv-anchors/bin/python)")
    parser.add_argument("--skip-anchor", action="store_true", help="no llama.cpp anchor")
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--questions", type=int, default=2, help="questions (QA pairs) per chunk")
    parser.add_argument("--skip-openai", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)

    model = args.model
    if model is None:
        try:
            model = str(embedded_model_dir(load_settings().models_dir))
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if not (Path(model) / "config.json").is_file():
        print(f"error: {ModelNotPreparedError.__doc__} ({model})", file=sys.stderr)
        return 2

    load_at_start = os.getloadavg()
    report: dict[str, Any] = {
        "model": model,
        "load_average": load_at_start,
        "openblas": {
            "loaded": openblas_effective(),
            "threads": openblas_threads(),
            "gflops": matmul_gflops(512, 5),
            "reference_gflops": reference_gflops(),
        },
    }
    threads = openblas_threads() or os.cpu_count() or 1
    report["ours"] = bench_ours(model, args.max_tokens, args.requests)
    report["mlx_lm"] = bench_mlx_lm(model, args.single, args.max_tokens)
    python = None if args.skip_anchor else anchor_python(args.anchor_python)
    report["llama_cpp"] = bench_llama_cpp(python, model, args.single, args.max_tokens, threads) if python else None
    report["prefix_reuse"] = bench_prefix(model, args.chunks, args.questions, args.batch)
    report["openai_rate"] = None if args.skip_openai else bench_openai()

    ours, mlx_lm, llama = report["ours"], report["mlx_lm"], report["llama_cpp"]
    p, o = report["prefix_reuse"], report["openai_rate"]
    vs_mlx_lm = ours["tokens_per_s"] / mlx_lm["tokens_per_s"]
    vs_llama = ours["tokens_per_s"] / llama["decode_tokens_per_s"] if llama else None
    rss_limit = ours["rss_before"] + ours["memory_budget"]
    ok_mlx_lm = vs_mlx_lm >= TARGET_VS_MLX_LM
    ok_llama = vs_llama is None or vs_llama >= TARGET_VS_LLAMA_CPP
    ok_rss = ours["memory_budget"] == 0 or ours["peak_rss"] <= rss_limit
    ok_a = ok_mlx_lm and ok_llama and ok_rss and ours["errors"] == 0
    report["ratios"] = {"ours_vs_mlx_lm": vs_mlx_lm, "ours_vs_llama_cpp_decode": vs_llama}
    ok_b = p["ratio"] <= TARGET_PREFIX_RATIO
    ok_c = o is None or float(o.get("ratio", 0.0)) >= TARGET_OPENAI_RATIO
    report["ok"] = ok_a and ok_b and ok_c
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    blas = report["openblas"]
    ref = blas["reference_gflops"]
    print(f"model: {model}")
    one, five, fifteen = report["load_average"]
    print(f"load average at start: {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores")
    print()
    print(f"{'measure':<52}{'value':>12}{'target':>10}  result")
    print("-" * 84)
    ratio_blas = blas["gflops"] / ref if ref else 0.0
    print(f"{'matmul GFLOP/s, OpenBLAS (threads=' + str(blas['threads']) + ')':<52}{blas['gflops']:>12.1f}")
    print(f"{'matmul GFLOP/s, reference BLAS':<52}{(ref or 0.0):>12.1f}")
    print(f"{'  OpenBLAS / reference':<52}{ratio_blas:>12.1f}x")
    print(f"(a) width: {ours['width_choice']}")
    print(f"{'(a) ours, ' + str(ours['requests']) + ' requests together, tokens/s':<52}{ours['tokens_per_s']:>12.1f}")
    print(f"{'(a) mlx-lm stream_generate one at a time, tokens/s':<52}{mlx_lm['tokens_per_s']:>12.1f}")
    if llama is None:
        print("(a) llama.cpp: not available (run `make bench-anchors`, or pass --anchor-python)")
    else:
        label = f"(a) llama.cpp {llama['llama_cpp_version']} one stream, {llama['threads']} threads"
        print(f"{label + ', decode tok/s':<52}{llama['decode_tokens_per_s']:>12.1f}")
        print(f"{'(a) llama.cpp prefill tok/s':<52}{llama['prefill_tokens_per_s']:>12.1f}")
        print(f"{'(a) llama.cpp tokens/s with prefill':<52}{llama['tokens_per_s']:>12.1f}")
    print(f"{'  ours / mlx-lm one at a time':<52}{vs_mlx_lm:>11.2f}x{'>= 5':>10}  {_verdict(ok_mlx_lm)}")
    if vs_llama is not None:
        print(f"{'  ours / llama.cpp single-stream decode':<52}{vs_llama:>11.2f}x{'>= 2':>10}  {_verdict(ok_llama)}")
    mib = 2**20
    print(f"{'(a) peak RSS MiB (limit: RSS before + width budget)':<52}{ours['peak_rss'] / mib:>12.0f}", end="")
    print(f"{'<= ' + str(round(rss_limit / mib)):>10}  {_verdict(ok_rss)}")
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
