"""The CPU decode attention: the same numbers as mlx's fused attention, in place on a loaded model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cicdllm_assets.llm.cpu_attention import ATTENTION_NAME, decode_attention, use_cpu_decode_attention
from cicdllm_assets.llm.mlx_backend import load_model, release_models
from tests.llm_fixtures import tiny_model_dir

__all__ = ["tiny_model_dir"]


def _fused(queries, keys, values, cache, scale, mask, sinks=None):  # type: ignore[no-untyped-def]
    import mlx.core as mx

    return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask, sinks=sinks)


@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "additive"])
def test_decode_attention_matches_the_fused_kernel(mask_kind: str) -> None:
    import mlx.core as mx

    mx.random.seed(3)
    batch, heads, kv_heads, keys_len, dim = 3, 9, 3, 37, 16
    queries = mx.random.normal((batch, heads, 1, dim))
    keys = mx.random.normal((batch, kv_heads, keys_len, dim))
    values = mx.random.normal((batch, kv_heads, keys_len, dim))
    # left padding as a batch cache makes it: sequence i ignores its first 5 * i positions
    visible = mx.arange(keys_len)[None, :] >= (5 * mx.arange(batch))[:, None]
    mask = {
        "none": None,
        "causal": "causal",
        "bool": visible.reshape(batch, 1, 1, keys_len),
        "additive": mx.where(visible, 0.0, -1e9).reshape(batch, 1, 1, keys_len),
    }[mask_kind]
    calls: list[int] = []

    def fused(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return _fused(*args, **kwargs)

    ours = decode_attention(fused)(queries, keys, values, None, 0.25, mask)
    expected = _fused(queries, keys, values, None, 0.25, mask)
    assert not calls  # the decode step was computed here, not handed to the fused kernel
    assert ours.shape == expected.shape == (batch, heads, 1, dim)
    assert mx.allclose(ours, expected, atol=1e-5, rtol=1e-5).item()
    # a prefill (several queries) goes to the original
    prefill = mx.random.normal((batch, heads, 4, dim))
    decode_attention(fused)(prefill, keys, values, None, 0.25, "causal")
    assert calls == [1]


def test_a_loaded_model_decodes_with_it_on_the_cpu(tiny_model_dir: Path) -> None:
    release_models()
    loaded = load_model(str(tiny_model_dir))
    module = sys.modules[type(loaded.model).__module__]
    patched = getattr(module, ATTENTION_NAME)
    assert hasattr(patched, "original")
    assert use_cpu_decode_attention(loaded.model)  # idempotent: not wrapped twice
    assert getattr(module, ATTENTION_NAME) is patched


def test_the_benchmark_baseline_gets_mlx_lm_attention_back(tiny_model_dir: Path) -> None:
    from cicdllm_assets.llm.cpu_attention import mlx_lm_attention

    release_models()
    loaded = load_model(str(tiny_model_dir))
    module = sys.modules[type(loaded.model).__module__]
    patched = getattr(module, ATTENTION_NAME)
    with mlx_lm_attention(loaded.model):
        assert getattr(module, ATTENTION_NAME) is patched.original
    assert getattr(module, ATTENTION_NAME) is patched
