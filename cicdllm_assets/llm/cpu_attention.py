"""Decode-step attention for mlx's CPU backend (Linux), in place of ``mx.fast.scaled_dot_product_attention``.

On the CPU, mlx's fused attention falls back to a generic kernel; for a decode step (one
query per sequence attending over its whole KV cache, the batch's dominant cost once the
contexts reach hundreds of tokens) two batched matmuls through BLAS and a softmax are
faster. :func:`use_cpu_decode_attention` swaps the model module's
``scaled_dot_product_attention`` for :func:`decode_attention`, which takes the one-query
case and hands everything else (prefill, attention sinks, quantized caches) to the
original. The GPU (Metal) path is never touched.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

ATTENTION_NAME = "scaled_dot_product_attention"
"""The name mlx-lm's model modules import the attention function under."""


def decode_attention(original: Callable[..., Any]) -> Callable[..., Any]:
    """An attention function that computes one-query (decode) steps with matmuls and a softmax
    and delegates every other call to ``original``."""
    import mlx.core as mx

    def attention(queries: Any, keys: Any, values: Any, cache: Any, scale: float, mask: Any, sinks: Any = None) -> Any:
        if queries.shape[2] != 1 or sinks is not None or hasattr(cache, "bits"):
            return original(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
        batch, heads, _, dim = queries.shape
        kv_heads = keys.shape[1]
        grouped = (queries * scale).reshape(batch, kv_heads, heads // kv_heads, dim)
        scores = grouped @ keys.swapaxes(-1, -2)  # (batch, kv_heads, group, keys)
        if mask is not None and not isinstance(mask, str):  # "causal" with one query masks nothing
            boolean = mask.dtype == mx.bool_
            scores = mx.where(mask, scores, mx.finfo(scores.dtype).min) if boolean else scores + mask
        weights = mx.softmax(scores, axis=-1, precise=True)
        return (weights @ values).reshape(batch, heads, 1, dim)

    attention.original = original  # type: ignore[attr-defined]
    return attention


def use_cpu_decode_attention(model: Any) -> bool:
    """Give ``model``'s mlx-lm module the decode attention when mlx runs on the CPU; True when
    it is in place (idempotent)."""
    import mlx.core as mx

    if mx.default_device() != mx.cpu:
        return False
    module = sys.modules.get(type(model).__module__)
    current = getattr(module, ATTENTION_NAME, None) if module is not None else None
    if current is None:
        return False
    if not hasattr(current, "original"):
        setattr(module, ATTENTION_NAME, decode_attention(current))
    return True


@contextlib.contextmanager
def mlx_lm_attention(model: Any) -> Iterator[None]:
    """Inside, ``model``'s module runs mlx-lm's own attention again (what a user of plain
    mlx-lm gets: the benchmarks' baseline); restored on exit."""
    module = sys.modules.get(type(model).__module__)
    current = getattr(module, ATTENTION_NAME, None) if module is not None else None
    original = getattr(current, "original", None)
    if original is None:
        yield
        return
    setattr(module, ATTENTION_NAME, original)
    try:
        yield
    finally:
        setattr(module, ATTENTION_NAME, current)
