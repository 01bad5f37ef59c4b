"""llama.cpp anchor for benchmarks/generation.py: one stream at a time through llama-cpp-python.

Runs under the interpreter that has ``llama_cpp`` (``make bench-anchors`` builds it into
.venv-anchors); reads a JSON job on stdin and prints one JSON line:

    {"gguf": PATH, "threads": N, "max_tokens": N, "prompts": [[token ids], ...]}

The prompts are token ids (the chat template already applied by the caller with the
same GGUF's vocabulary), decoded greedily one request after the other. The time to the
first token is prefill (plus one decode step); the rest is single-stream decoding.
Standard library only besides llama_cpp.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    """Run the job from stdin; print the timings."""
    job = json.load(sys.stdin)
    import llama_cpp

    threads = int(job["threads"])
    llm = llama_cpp.Llama(
        model_path=job["gguf"],
        n_ctx=2048,
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    eos = llm.token_eos()
    max_tokens = int(job["max_tokens"])

    def run(tokens: list[int], budget: int) -> tuple[int, float, float]:
        start = time.perf_counter()
        first = 0.0
        count = 0
        for token in llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            if count == 0:
                first = time.perf_counter()
            if token == eos:
                break
            count += 1
            if count >= budget:
                break
        return count, first - start, time.perf_counter() - first

    prompts: list[list[int]] = job["prompts"]
    run(prompts[0], 4)  # warm up
    prefill_tokens = decode_tokens = completion = 0
    prefill_s = decode_s = 0.0
    for prompt in prompts:
        count, first_s, rest_s = run(prompt, max_tokens)
        completion += count
        prefill_tokens += len(prompt)
        prefill_s += first_s
        decode_tokens += max(0, count - 1)
        decode_s += rest_s
    print(
        json.dumps(
            {
                "llama_cpp_version": getattr(llama_cpp, "__version__", "?"),
                "threads": threads,
                "requests": len(prompts),
                "completion_tokens": completion,
                "prefill_tokens": prefill_tokens,
                "prefill_seconds": prefill_s,
                "decode_tokens": decode_tokens,
                "decode_seconds": decode_s,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
