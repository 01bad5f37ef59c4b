"""The CPU kernels: the same numbers as mlx's own functions, only inside inference, gradients untouched."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from cicdllm_assets.llm import fast_math
from cicdllm_assets.llm.cpu_kernels import (
    ATTENTION_NAME,
    SWIGLU_NAME,
    MlxWithCpuLogsumexp,
    cpu_attention,
    cpu_linear,
    inference_kernels,
    use_cpu_kernels,
)
from cicdllm_assets.llm.mlx_backend import load_model, release_models
from tests.llm_fixtures import tiny_model_dir

__all__ = ["tiny_model_dir"]


def _fused(queries: Any, keys: Any, values: Any, cache: Any, scale: float, mask: Any, sinks: Any = None) -> Any:
    import mlx.core as mx

    return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask, sinks=sinks)


def _masks(batch: int, n_queries: int, keys_len: int) -> dict[str, Any]:
    import mlx.core as mx

    # left padding as a batch cache makes it: sequence i ignores its first 5 * i positions,
    # and each query sees the keys up to its own position
    padded = mx.arange(keys_len)[None, :] >= (5 * mx.arange(batch))[:, None]
    causal = mx.arange(keys_len)[None, :] <= mx.arange(keys_len - n_queries, keys_len)[:, None]
    visible = padded[:, None, :] & causal[None, :, :]
    return {
        "none": None,
        "causal": "causal",
        "bool": visible.reshape(batch, 1, n_queries, keys_len),
        "additive": mx.where(visible, 0.0, -1e9).reshape(batch, 1, n_queries, keys_len),
        "per_head": mx.broadcast_to(visible.reshape(batch, 1, n_queries, keys_len), (batch, 6, n_queries, keys_len)),
        "2d": causal,
    }


@pytest.mark.parametrize("n_queries", [1, 5])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "additive", "per_head", "2d"])
def test_attention_matches_the_fused_kernel(mask_kind: str, n_queries: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlx.core as mx

    monkeypatch.setattr(fast_math, "ATTENTION_ROWS", 2)  # five queries: three blocks of rows
    mx.random.seed(3)
    batch, heads, kv_heads, keys_len, dim = 3, 6, 2, 37, 16
    queries = mx.random.normal((batch, heads, n_queries, dim))
    # keys and values are the filled part of a larger buffer, as a KV cache hands them over
    keys = mx.random.normal((batch, kv_heads, keys_len + 11, dim))[..., :keys_len, :]
    values = mx.random.normal((batch, kv_heads, keys_len + 11, dim))[..., :keys_len, :]
    mask = _masks(batch, n_queries, keys_len)[mask_kind]
    calls: list[int] = []

    def fused(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return _fused(*args, **kwargs)

    attention = cpu_attention(fused)
    with inference_kernels():
        ours = attention(queries, keys, values, None, 0.25, mask)
    expected = _fused(queries, keys, values, None, 0.25, mask)
    assert not calls  # computed here, not handed to the fused kernel
    assert ours.shape == expected.shape == (batch, heads, n_queries, dim)
    assert mx.allclose(ours, expected, atol=1e-5, rtol=1e-5).item()
    attention(queries, keys, values, None, 0.25, mask)  # outside inference: mlx's own
    assert calls == [1]


def test_attention_sinks_and_other_dtypes_go_to_mlx() -> None:
    import mlx.core as mx

    calls: list[int] = []

    def fused(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return _fused(*args, **kwargs)

    queries, keys = mx.zeros((1, 2, 1, 8)), mx.zeros((1, 2, 4, 8))
    with inference_kernels():
        cpu_attention(fused)(queries, keys, keys, None, 1.0, None, sinks=mx.zeros((2,)))
        half = keys.astype(mx.float16)
        cpu_attention(fused)(queries.astype(mx.float16), half, half, None, 1.0, None)
    assert calls == [1, 1]


def test_numpy_functions_match_mlx() -> None:
    import mlx.core as mx

    mx.random.seed(5)
    x = mx.random.normal((4, 3, 300)) * 30
    x = mx.concatenate([x, mx.full((4, 3, 1), -mx.inf), mx.full((4, 3, 1), 80.0)], axis=-1)
    for keepdims in (True, False):
        got = fast_math.logsumexp(x, axis=-1, keepdims=keepdims)
        assert mx.allclose(got, mx.logsumexp(x, axis=-1, keepdims=keepdims), rtol=1e-6).item()
    rows = mx.array([[-mx.inf, -mx.inf], [0.0, -mx.inf]])
    assert fast_math.logsumexp(rows, axis=-1).tolist() == [-float("inf"), 0.0]
    gate = mx.concatenate([mx.random.normal((2, 500)) * 8, mx.array([[-200.0, 200.0]] * 2)], axis=-1)
    up = mx.random.normal(gate.shape)
    expected = gate * mx.sigmoid(gate) * up
    assert mx.allclose(fast_math.swiglu(gate, up), expected, atol=1e-6, rtol=1e-5).item()
    assert fast_math.logsumexp(x.astype(mx.float16), axis=-1) is None  # other dtypes: the caller uses mlx's


@pytest.mark.parametrize("bias", [False, True])
def test_a_single_row_linear_is_a_matrix_vector_product(bias: bool) -> None:
    import mlx.core as mx
    import mlx.nn as nn

    mx.random.seed(7)
    layer = nn.Linear(40, 24, bias=bias)
    calls: list[int] = []

    def original(self: Any, x: Any) -> Any:
        calls.append(x.shape[1])
        return x @ self.weight.T + (self.bias if "bias" in self else 0)

    linear = cpu_linear(original)
    one, two = mx.random.normal((1, 1, 40)), mx.random.normal((1, 2, 40))
    with inference_kernels():
        ours = linear(layer, one)
        linear(layer, two)  # two rows: a matrix product, mlx's own
    assert calls == [2]
    assert ours.shape == (1, 1, 24)
    linear(layer, one)  # outside inference: the original
    assert calls == [2, 1]
    assert mx.allclose(ours, layer(one), atol=1e-5, rtol=1e-5).item()


def test_a_loaded_model_gets_the_kernels_once(tiny_model_dir: Path) -> None:
    release_models()
    loaded = load_model(str(tiny_model_dir))
    generate = sys.modules["mlx_lm.generate"]  # the module (mlx_lm.generate is its function)
    module = sys.modules[type(loaded.model).__module__]
    installed = {name: getattr(module, name) for name in (ATTENTION_NAME, SWIGLU_NAME)}
    assert all(hasattr(f, "original") for f in installed.values())
    assert isinstance(generate.mx, MlxWithCpuLogsumexp)
    assert use_cpu_kernels(loaded.model)  # idempotent: not wrapped twice
    assert {name: getattr(module, name) for name in installed} == installed
    assert not isinstance(generate.mx.original, MlxWithCpuLogsumexp)


def test_inference_gives_the_same_logits_and_training_the_same_gradients(tiny_model_dir: Path) -> None:
    """Inside ``inference_kernels`` a forward pass (prefill, then a decode step on its cache)
    gives mlx's logits; outside, gradients flow through mlx's own functions (numpy has none)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models.cache import make_prompt_cache

    release_models()
    model = load_model(str(tiny_model_dir)).model
    tokens = mx.array([[3, 17, 42, 8, 99, 5, 23, 61]])

    def forward() -> list[Any]:
        cache = make_prompt_cache(model)
        prefill = model(tokens[:, :-1], cache=cache)
        step = model(tokens[:, -1:], cache=cache)
        mx.eval(prefill, step)
        return [prefill, step]

    with inference_kernels():
        fast = forward()
    plain = forward()
    for a, b in zip(fast, plain, strict=True):
        assert mx.allclose(a, b, atol=1e-4, rtol=1e-4).item()

    def loss(m: Any) -> Any:
        logits = m(tokens[:, :-1])
        return nn.losses.cross_entropy(logits, tokens[:, 1:]).mean()

    grads = dict(tree_flatten(nn.value_and_grad(model, loss)(model)[1]))
    module = sys.modules[type(model).__module__]
    replaced = {name: getattr(module, name) for name in (ATTENTION_NAME, SWIGLU_NAME)}
    try:
        for name, function in replaced.items():
            setattr(module, name, function.original)
        expected = dict(tree_flatten(nn.value_and_grad(model, loss)(model)[1]))
    finally:
        for name, function in replaced.items():
            setattr(module, name, function)
    assert grads.keys() == expected.keys()
    assert all(mx.array_equal(grads[k], expected[k]).item() for k in grads)
    assert any(mx.any(g != 0).item() for g in grads.values())


@pytest.mark.parametrize("length", [1, 5])
@pytest.mark.parametrize("per_sequence", [False, True])
def test_rope_matches_mlx(length: int, per_sequence: bool) -> None:
    import mlx.core as mx
    import mlx.nn as nn

    from cicdllm_assets.llm.cpu_kernels import cpu_rope

    mx.random.seed(7)
    x = mx.random.normal((3, 4, length, 16))
    offset: Any = mx.array([0, 7, 300]) if per_sequence else 41
    rope = nn.RoPE(16, base=100000.0, scale=0.5)
    original = nn.RoPE.__call__
    original = getattr(original, "original", original)
    expected = mx.fast.rope(x, 16, traditional=False, base=100000.0, scale=0.5, offset=offset)
    calls: list[int] = []

    def counted(self: Any, x: Any, offset: Any = 0) -> Any:
        calls.append(1)
        return original(self, x, offset)

    call = cpu_rope(counted)
    with inference_kernels():
        ours = call(rope, x, offset)
        again = call(rope, x, offset)  # the cached rotation
        call(nn.RoPE(16, traditional=True), x, offset)  # interleaved: mlx's
    assert calls == [1]
    assert mx.allclose(ours, expected, atol=1e-5, rtol=1e-5).item()
    assert mx.array_equal(ours, again).item()
    call(rope, x, offset)  # outside inference: mlx's
    assert calls == [1, 1]


def test_numpy_blas_runs_one_thread_in_inference_and_every_thread_for_one_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy's own OpenBLAS on one thread inside inference (its idle workers would spin against
    mlx's matmuls), back to its count for a single row's matrix-vector product and after."""
    import mlx.core as mx
    import mlx.nn as nn

    from cicdllm_assets.llm import openblas

    blas = openblas._numpy_blas()
    assert blas is not None, "numpy's wheel carries OpenBLAS on this platform"
    setter, getter = blas
    setter(2)
    seen: list[int] = []
    matvec = fast_math.matvec

    def counting(weight: Any, x: Any, bias: Any) -> Any:
        seen.append(int(getter()))
        return matvec(weight, x, bias)

    monkeypatch.setattr(fast_math, "matvec", counting)
    layer = nn.Linear(8, 4)
    linear = cpu_linear(lambda self, x: x @ self.weight.T)
    with inference_kernels():
        inside = int(getter())
        with inference_kernels():  # nested: unchanged
            nested = int(getter())
        linear(layer, mx.ones((1, 1, 8)))
        after_row = int(getter())
    assert (inside, nested, seen, after_row, int(getter())) == (1, 1, [2], 1, 2)
