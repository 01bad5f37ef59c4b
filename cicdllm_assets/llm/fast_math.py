"""Softmax, log-sum-exp and SwiGLU for mlx's CPU backend, with numpy's vectorised ``exp``.

mlx's CPU backend evaluates ``exp`` one element at a time (about 23 ns per element on this
project's 2-core x86 machine, where numpy's SIMD ``exp`` took 3 to 4 with the conversions,
measured while writing this module). A decode step of SmolLM2-135M
spends a large share of its time there: the SwiGLU of every layer's MLP, the attention
softmax over the whole context, and the log-sum-exp over the vocabulary that mlx-lm's
batch generator normalises the logits with; prefill more.

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


def softmax(x: Any, axis: int = -1) -> Any:
    """Softmax along ``axis`` (``mx.softmax(x, axis, precise=True)`` for float32, to float rounding)."""
    import mlx.core as mx

    values = _numpy(x)
    if values is None:
        return None
    weights = values - values.max(axis=axis, keepdims=True)
    np.exp(weights, out=weights)
    total = weights.sum(axis=axis, keepdims=True)
    weights *= np.reciprocal(total, out=total)  # one division per row, not per element
    return mx.array(weights)


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
