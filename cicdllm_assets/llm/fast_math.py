"""Attention, log-sum-exp, SwiGLU and matrix-vector products for mlx's CPU backend, in numpy.

mlx's CPU backend evaluates ``exp`` one element at a time (about 23 ns per element on this
project's 2-core x86 machine, where numpy's SIMD ``exp`` took 3 to 4 with the conversions,
measured while writing this module). A decode step of SmolLM2-135M
spends a large share of its time there: the SwiGLU of every layer's MLP, the attention
softmax over the whole context, and the log-sum-exp over the vocabulary that mlx-lm's
batch generator normalises the logits with; prefill more. Its matmuls lose too where numpy
calls BLAS better: attention over a KV cache (mlx's batched matmul ran at about a third of
the memory bandwidth) and one sequence's linear layers (a general matrix product where a
matrix-vector product reads the weights once).

Each function here evaluates its (float32) input, computes on the same memory through numpy
and returns a new mlx array: it ends the lazy graph there, so it is for inference only. It
has no gradient; :mod:`~cicdllm_assets.llm.cpu_kernels` calls these only inside
:func:`~cicdllm_assets.llm.cpu_kernels.inference_kernels`. Other dtypes return None (the caller
uses mlx's own function). Domain code: no Dagster.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _numpy(array: Any) -> np.ndarray | None:
    """``array`` evaluated, as a numpy view of its memory; None unless float32."""
    import mlx.core as mx

    if array.dtype != mx.float32:
        return None
    return np.asarray(array)


ATTENTION_ROWS = 128
"""Query rows of one sequence whose attention scores are computed and normalised together
(a few MB: the softmax passes stay in the cache)."""


def attention(queries: Any, keys: Any, values: Any, scale: float, mask: Any) -> Any:
    """``softmax(scale * queries @ keys^T + mask) @ values`` for float32 arrays, the query heads
    of one KV head together (grouped-query attention), as ``mx.fast.scaled_dot_product_attention``.

    ``queries`` is ``(batch, heads, n, dim)``, ``keys`` and ``values`` ``(batch, kv_heads, length,
    dim)`` (a KV cache's slice is read in place); ``mask`` is None, a boolean (True: attend) or
    additive array broadcastable to ``(batch, heads, n, length)``, or ``"causal"``. One decode
    query per sequence is one batched matmul each way; longer prompts go
    :data:`ATTENTION_ROWS` query rows of one sequence at a time. None for other dtypes.
    """
    import mlx.core as mx

    q, k, v = _numpy(queries), _numpy(keys), _numpy(values)
    if q is None or k is None or v is None:
        return None
    batch, heads, n, dim = q.shape
    kv_heads, length = k.shape[1], k.shape[2]
    group = heads // kv_heads
    grouped = q.reshape(batch, kv_heads, group, n, dim)
    keys_t = k.swapaxes(-1, -2)[:, :, None]  # (batch, kv_heads, 1, dim, length)
    values_g = v[:, :, None]
    bias = _additive_mask(mask, heads, kv_heads, n, length)  # (batch | 1, kv | 1, group | 1, n, length)
    out = np.empty((batch, kv_heads, group, n, dim), dtype=np.float32)
    if n == 1:
        out[:] = _attend(grouped, keys_t, values_g, scale, bias)
    else:
        for b in range(batch):
            mask_b = None if bias is None else bias[b if bias.shape[0] > 1 else 0]
            for start in range(0, n, ATTENTION_ROWS):
                rows = slice(start, start + ATTENTION_ROWS)
                part = None if mask_b is None else mask_b[..., rows, :]
                out[b, :, :, rows] = _attend(grouped[b, :, :, rows], keys_t[b], values_g[b], scale, part)
    return mx.array(out.reshape(batch, heads, n, dim))


def _attend(q: np.ndarray, keys_t: np.ndarray, values: np.ndarray, scale: float, bias: np.ndarray | None) -> np.ndarray:
    scores = np.matmul(q, keys_t)
    scores *= np.float32(scale)
    if bias is not None:
        scores += bias
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    total = scores.sum(axis=-1, keepdims=True)
    scores *= np.reciprocal(total, out=total)
    return np.matmul(scores, values)


def _additive_mask(mask: Any, heads: int, kv_heads: int, n: int, length: int) -> np.ndarray | None:
    """``mask`` as float32 additive terms in the grouped layout ``(batch | 1, kv_heads | 1,
    group | 1, n, length)``; masked positions get float32's lowest finite value (a row with
    every key masked averages them instead of turning into NaN, as mlx's kernel)."""
    if mask is None:
        return None
    if isinstance(mask, str):  # "causal": query i sits at position length - n + i
        visible = np.arange(length)[None, :] <= np.arange(length - n, length)[:, None]
        array = visible[None, None, None]
    else:
        array = np.asarray(mask)
        if array.ndim == 2:
            array = array[None, None, None]
        elif array.shape[1] == heads and heads > 1:
            array = array.reshape(array.shape[0], kv_heads, heads // kv_heads, *array.shape[2:])
        else:
            array = array[:, :, None]
    if array.dtype == np.bool_:
        return np.where(array, np.float32(0.0), np.finfo(np.float32).min)
    return array.astype(np.float32, copy=False)


def logsumexp(x: Any, axis: int, keepdims: bool = False) -> Any:
    """``log(sum(exp(x)))`` along ``axis`` (``mx.logsumexp`` for float32, to float rounding)."""
    import mlx.core as mx

    values = _numpy(x)
    if values is None:
        return None
    peak = values.max(axis=axis, keepdims=True)
    peak[~np.isfinite(peak)] = 0.0  # rows of -inf stay -inf, +inf stays +inf
    shifted = values - peak
    np.exp(shifted, out=shifted)
    with np.errstate(divide="ignore"):
        total = np.log(shifted.sum(axis=axis, keepdims=True)) + peak
    return mx.array(total if keepdims else np.squeeze(total, axis=axis))


def matvec(weight: Any, x: Any, bias: Any = None) -> Any:
    """``x @ weight.T (+ bias)`` for one row ``x`` (any leading dims of size 1): a BLAS matrix-vector
    product, where mlx's CPU matmul runs a general matrix product at a fraction of the memory
    bandwidth. None unless float32."""
    import mlx.core as mx

    w, row = _numpy(weight), _numpy(x)
    b = None if bias is None else _numpy(bias)
    if w is None or row is None or (bias is not None and b is None):
        return None
    out = w @ row.reshape(-1)
    if b is not None:
        out += b
    return mx.array(out).reshape(*x.shape[:-1], w.shape[0])


def swiglu(gate: Any, x: Any) -> Any:
    """``silu(gate) * x`` (mlx-lm's ``swiglu``) for float32 inputs of one shape."""
    import mlx.core as mx

    g, u = _numpy(gate), _numpy(x)
    if g is None or u is None or g.shape != u.shape:
        return None
    out = np.negative(g)
    with np.errstate(over="ignore"):  # exp(-g) = inf for very negative g: g / inf = -0, silu's limit
        np.exp(out, out=out)
    out += 1.0
    np.divide(g, out, out=out)
    out *= u
    return mx.array(out)
