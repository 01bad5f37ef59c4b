"""Prefix prefill benchmark: the MLX backend's prefix batches against one padded batch of 8.

Eight code chunks of this repository, cut to 800 to 1,700 characters (prefixes of about 200 to 420
tokens after a shared system prompt, as the demo's), two requests each with a one-token budget,
so the time is the prefill of the prefixes and of the requests' own tokens. The same backend
runs the same requests with an empty prefix cache, alternating (``--rounds`` times each):

* ``ours``: :func:`~cicdllm_assets.llm.mlx_backend.prefix_group` (batches padded to 512
  tokens at most: these long prefixes go one by one but for the last two);
* ``batch of 8``: every missing prefix in one padded batch (what the backend did before).

Rounds alternate which goes first (ours first in odd rounds). Prints the prefixes' token
counts, each run and the medians; exits 1 unless ours is faster (median) than one batch.
Run ``make model`` first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cicdllm_assets.llm.openblas import ensure_openblas

ensure_openblas()

from cicdllm_assets.config import ConfigError, load_settings  # noqa: E402
from cicdllm_assets.llm import mlx_backend  # noqa: E402
from cicdllm_assets.llm.base import ChatMessage, GenerationRequest  # noqa: E402
from cicdllm_assets.llm.models.paths import embedded_model_dir  # noqa: E402

CHUNK_CHARS = (1700, 1650, 1550, 1250, 1150, 1100, 1000, 800)
SOURCES = [
    path
    for path in sorted((Path(__file__).resolve().parents[1] / "cicdllm_assets" / "generation").glob("*.py"))
    if len(path.read_text()) >= max(CHUNK_CHARS)
][: len(CHUNK_CHARS)]
SYSTEM = ChatMessage("system", "You are an expert software engineer. Answer questions about code precisely. " * 3)


def requests(tag: str) -> list[GenerationRequest]:
    """Two one-token requests per chunk, sharing the chunk's prefix (system prompt + code)."""
    chunks = [path.read_text()[:size] for path, size in zip(SOURCES, CHUNK_CHARS, strict=True)]
    return [
        GenerationRequest(
            key=f"{tag}-{c}-{q}",
            messages=(
                SYSTEM,
                ChatMessage("user", f"Code:\n{chunk}"),
                ChatMessage("user", f"Question {q}: what does it do?"),
            ),
            max_tokens=1,
            temperature=0.0,
            prefix_messages=2,
        )
        for c, chunk in enumerate(chunks)
        for q in range(2)
    ]


def one_batch(lengths: Sequence[int]) -> int:
    """Every missing prefix (up to 8) in one padded batch."""
    return min(len(lengths), mlx_backend.PREFIX_PREFILL_WIDTH)


def main(argv: list[str] | None = None) -> int:
    """Run both groupings alternately; print the table; 0 when ours is faster."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", help="model directory (default: the prepared embedded model)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each grouping")
    args = parser.parse_args(argv)
    try:
        model = args.model or str(embedded_model_dir(load_settings().models_dir))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(SOURCES) < len(CHUNK_CHARS):
        print(f"error: fewer than {len(CHUNK_CHARS)} source files in cicdllm_assets/generation", file=sys.stderr)
        return 2
    backend = mlx_backend.MLXBackend(model, batch_size=32)
    list(backend.generate(requests("warm-up")[:1]))
    groupings: dict[str, Callable[[Sequence[int]], int]] = {"ours": mlx_backend.prefix_group, "batch of 8": one_batch}
    seconds: dict[str, list[float]] = {name: [] for name in groupings}
    system = len(backend._template((SYSTEM,), False))
    sizes = [len(backend._template(r.messages[:2], False)) - system for r in requests("size")[::2]]
    print(f"prefix tokens after the {system}-token system prompt: {sizes}")
    ours = mlx_backend.prefix_group
    try:
        for round_ in range(args.rounds):
            order = list(groupings.items())
            for name, grouping in order if round_ % 2 == 0 else order[::-1]:
                mlx_backend.prefix_group = grouping  # type: ignore[assignment]
                mlx_backend._prefix_cache.drop(lambda key: True)
                batches = backend.stats.prefix_prefill_batches
                started = time.perf_counter()
                results = list(backend.generate(requests(f"{name}-{round_}")))
                elapsed = time.perf_counter() - started
                if not all(r.ok for r in results):
                    print(f"error: {name}: a request failed", file=sys.stderr)
                    return 2
                seconds[name].append(elapsed)
                batches = backend.stats.prefix_prefill_batches - batches
                print(f"round {round_ + 1} {name:>10}: {elapsed:6.2f} s, {batches} prefill batches")
    finally:
        mlx_backend.prefix_group = ours
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"median ours {medians['ours']:.2f} s, batch of 8 {medians['batch of 8']:.2f} s")
    if medians["ours"] >= medians["batch of 8"]:
        print("MISSED: the prefix batches are not faster than one padded batch")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
