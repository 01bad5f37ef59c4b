"""Faster attention, SwiGLU, RoPE and log-sum-exp for mlx-lm inference on mlx's CPU backend (Linux).

On the CPU, mlx's fused ``mx.fast.scaled_dot_product_attention`` falls back to a generic
kernel and every ``exp`` runs one element at a time (:mod:`~cicdllm_assets.llm.fast_math`).
:func:`use_cpu_kernels` replaces, on the CPU only, six functions mlx-lm looks up at call time:

* a model module's ``scaled_dot_product_attention`` by :func:`cpu_attention`: numpy's
  matmuls and softmax (:func:`fast_math.attention`, on the KV cache's memory), for prefill and
  decode; attention sinks, quantized caches and masks of other shapes go to the original;
* a model module's ``swiglu`` (the MLP activation of Llama-family models) by numpy's;
* ``mlx_lm.generate``'s ``mx.logsumexp`` (the batch generator normalises every step's logits
  over the whole vocabulary with it) by numpy's;
* ``mlx.nn.Linear.__call__`` and ``mlx.nn.Embedding.as_linear`` (tied output heads) by
  :func:`cpu_linear` for a single row: a matrix-vector product (a batch of one decodes at the
  memory bandwidth);
* ``mlx.nn.RoPE.__call__`` by :func:`cpu_rope`: the rotation's cosines and sines come from
  numpy once per positions (every layer of a step shares them) instead of per element and
  layer in mlx's kernel; traditional (interleaved) and partial rotations go to mlx's.

Inside, numpy's own OpenBLAS runs on one thread (:func:`~cicdllm_assets.llm.openblas.numpy_blas_threads`:
its spinning idle workers took a core from mlx's matmuls), except for a single row's
matrix-vector product, which reads the weights with every core.

The replacements have no gradient, so they act only inside :func:`inference_kernels` (the MLX
backend's generation loop, in the thread that builds the graph); everywhere else (LoRA training,
evaluation, the benchmarks' mlx-lm baseline) mlx-lm's own functions run. The GPU (Metal) path
is never touched. Domain code: no Dagster.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from cicdllm_assets.llm import fast_math
from cicdllm_assets.llm.openblas import numpy_blas_threads

ATTENTION_NAME = "scaled_dot_product_attention"
"""The name mlx-lm's model modules import the attention function under."""
SWIGLU_NAME = "swiglu"
"""The name mlx-lm's Llama-family modules import their MLP activation under."""
GENERATE_MODULE = "mlx_lm.generate"
"""The module whose ``mx.logsumexp`` normalises the batch generator's logits."""

_state = threading.local()


@contextlib.contextmanager
def inference_kernels() -> Iterator[None]:
    """Inside, in this thread, the replaced functions compute with the CPU kernels."""
    depth = getattr(_state, "depth", 0)
    _state.depth = depth + 1
    try:
        if depth:
            yield
            return
        with numpy_blas_threads(1) as before:
            _state.blas_threads = before or 1
            yield
    finally:
        _state.depth = depth


def _active() -> bool:
    return bool(getattr(_state, "depth", 0))


def cpu_attention(original: Callable[..., Any]) -> Callable[..., Any]:
    """An attention function computing with :func:`fast_math.attention` inside
    :func:`inference_kernels`; every other call goes to ``original``."""
    import mlx.core as mx

    def attention(queries: Any, keys: Any, values: Any, cache: Any, scale: float, mask: Any, sinks: Any = None) -> Any:
        heads, kv_heads = queries.shape[1], keys.shape[1]
        unexpected_mask = (
            mask is not None
            and not isinstance(mask, str)
            and (mask.ndim not in (2, 4) or mask.dtype not in (mx.bool_, mx.float32))
        )
        if not _active() or sinks is not None or hasattr(cache, "bits") or unexpected_mask or heads % kv_heads:
            return original(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
        out = fast_math.attention(queries, keys, values, scale, mask)
        if out is None:
            return original(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
        return out

    attention.original = original  # type: ignore[attr-defined]
    return attention


def cpu_swiglu(original: Callable[..., Any]) -> Callable[..., Any]:
    """A SwiGLU computing with :func:`fast_math.swiglu` inside :func:`inference_kernels`."""

    def swiglu(gate: Any, x: Any) -> Any:
        out = fast_math.swiglu(gate, x) if _active() else None
        return original(gate, x) if out is None else out

    swiglu.original = original  # type: ignore[attr-defined]
    return swiglu


def _rotation(offset: Any, length: int, dims: int, base: float, scale: float) -> tuple[Any, Any]:
    """``(cos, sin)`` of the angles at positions ``offset + [0, length)`` (``offset`` an int or
    one per sequence), shaped to broadcast over ``(batch, heads, length, dims / 2)``; the last
    one is reused (the layers of a step ask for the same)."""
    import mlx.core as mx
    import numpy as np

    starts = np.asarray(offset, dtype=np.int64).reshape(-1)
    key = (starts.tobytes(), length, dims, base, scale)
    cached = getattr(_state, "rotation", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    positions = starts[:, None] + np.arange(length)[None, :]  # (batch | 1, length)
    frequencies = scale * np.power(float(base), -np.arange(0, dims, 2, dtype=np.float64) / dims)
    angles = positions[:, None, :, None] * frequencies  # (batch | 1, 1, length, dims / 2)
    rotation = (mx.array(np.cos(angles).astype(np.float32)), mx.array(np.sin(angles).astype(np.float32)))
    _state.rotation = (key, rotation)
    return rotation


def cpu_rope(original: Callable[..., Any]) -> Callable[..., Any]:
    """``mlx.nn.RoPE.__call__`` with the rotation from :func:`_rotation` inside
    :func:`inference_kernels`; every other call goes to ``original``."""
    import mlx.core as mx

    def call(self: Any, x: Any, offset: Any = 0) -> Any:
        if not _active() or self.traditional or self.dims != x.shape[-1] or x.dtype != mx.float32 or x.ndim != 4:
            return original(self, x, offset)
        cos, sin = _rotation(offset, x.shape[2], self.dims, self.base, self.scale)
        half = self.dims // 2
        first, second = x[..., :half], x[..., half:]
        return mx.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)

    call.original = original  # type: ignore[attr-defined]
    return call


def cpu_linear(original: Callable[..., Any]) -> Callable[..., Any]:
    """``mlx.nn.Linear.__call__`` (or ``mlx.nn.Embedding.as_linear``) by :func:`fast_math.matvec`
    for one row (a decode step of one sequence) inside :func:`inference_kernels`."""

    def call(self: Any, x: Any) -> Any:
        out = None
        if _active() and x.size == x.shape[-1]:
            with numpy_blas_threads(_state.blas_threads):  # one row: the bandwidth of every core
                out = fast_math.matvec(self["weight"], x, self.get("bias"))
        return original(self, x) if out is None else out

    call.original = original  # type: ignore[attr-defined]
    return call


class MlxWithCpuLogsumexp:
    """``mlx.core`` as ``mlx_lm.generate`` sees it: ``logsumexp`` over one axis computes with
    :func:`fast_math.logsumexp` inside :func:`inference_kernels`; everything else is mlx's."""

    def __init__(self, mx: Any) -> None:
        self.original = mx

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)

    def logsumexp(self, a: Any, axis: Any = None, keepdims: bool = False, **kwargs: Any) -> Any:
        """mlx's ``logsumexp``, through numpy in inference."""
        if _active() and isinstance(axis, int) and not kwargs:
            out = fast_math.logsumexp(a, axis, keepdims)
            if out is not None:
                return out
        return self.original.logsumexp(a, axis=axis, keepdims=keepdims, **kwargs)


def use_cpu_kernels(model: Any) -> bool:
    """Install the replacements for ``model``'s mlx-lm module (and ``mlx_lm.generate``) when mlx
    runs on the CPU; True when the attention is in place (idempotent)."""
    import mlx.core as mx
    import mlx.nn as nn

    if mx.default_device() != mx.cpu:
        return False
    module = sys.modules.get(type(model).__module__)
    if module is None or getattr(module, ATTENTION_NAME, None) is None:
        return False
    for name, replacement in ((ATTENTION_NAME, cpu_attention), (SWIGLU_NAME, cpu_swiglu)):
        current = getattr(module, name, None)
        if current is not None and not hasattr(current, "original"):
            setattr(module, name, replacement(current))
    if not hasattr(nn.RoPE.__call__, "original"):
        nn.RoPE.__call__ = cpu_rope(nn.RoPE.__call__)  # type: ignore[method-assign]
    if not hasattr(nn.Linear.__call__, "original"):
        nn.Linear.__call__ = cpu_linear(nn.Linear.__call__)  # type: ignore[method-assign]
    if not hasattr(nn.Embedding.as_linear, "original"):
        nn.Embedding.as_linear = cpu_linear(nn.Embedding.as_linear)  # type: ignore[method-assign]
    generate: Any = importlib.import_module(GENERATE_MODULE)
    if not isinstance(generate.mx, MlxWithCpuLogsumexp):
        generate.mx = MlxWithCpuLogsumexp(generate.mx)
    return True
