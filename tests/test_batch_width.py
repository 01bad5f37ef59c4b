"""The automatic batch width: compute bound for small models, memory bound for long sequences."""

from __future__ import annotations

import pytest

from cicdllm_assets.llm.batch_width import MAX_WIDTH, STEP_PARAMETER_BUDGET, ModelShape, choose_width

# SmolLM2-135M in float32 (its config.json).
SMOL = ModelShape(
    parameters=134_515_008,
    weight_bytes=538_060_032,
    layers=30,
    heads=9,
    kv_heads=3,
    head_dim=64,
    hidden=576,
    intermediate=1536,
    vocab=49152,
    kv_itemsize=4,
)
GIB = 2**30


def test_kv_bytes_per_token() -> None:
    assert SMOL.kv_bytes_per_token == 2 * 30 * 3 * 64 * 4  # 46080


def test_small_model_with_memory_to_spare_is_compute_bound() -> None:
    choice = choose_width(SMOL, 512, 20 * GIB)
    assert choice.compute_width == STEP_PARAMETER_BUDGET // SMOL.parameters == 96
    assert choice.memory_width > choice.compute_width
    assert choice.width == 96
    assert "compute bound" in choice.describe()


def test_little_free_memory_bounds_the_width() -> None:
    per_sequence = SMOL.bytes_per_sequence(1024)
    choice = choose_width(SMOL, 1024, 10 * per_sequence)
    assert choice.memory_budget == 5 * per_sequence
    assert choice.width == 5
    assert choice.width * choice.bytes_per_sequence <= choice.memory_budget
    assert "memory bound" in choice.describe()


def test_width_is_clamped() -> None:
    assert choose_width(SMOL, 1024, 0).width == 1
    tiny = ModelShape(1_000_000, 4_000_000, 2, 2, 1, 16, 32, 64, 256, 4)
    assert choose_width(tiny, 64, 20 * GIB).width == MAX_WIDTH
    big = ModelShape(7_000_000_000, 28 * GIB, 32, 32, 8, 128, 4096, 14336, 128256, 4)
    assert choose_width(big, 4096, 20 * GIB).width == 1
    with pytest.raises(ValueError, match="sequence_tokens"):
        choose_width(SMOL, 0, GIB)
