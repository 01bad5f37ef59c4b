"""The numpy top-p sampler keeps mlx-lm's nucleus and draws from it in proportion."""

from __future__ import annotations

import numpy as np
import pytest

from cicdllm_assets.llm.openblas import ensure_openblas

ensure_openblas()

import mlx.core as mx  # noqa: E402
from mlx_lm.sample_utils import apply_top_p  # noqa: E402

from cicdllm_assets.llm.mlx_backend import TOP_P_CANDIDATES, TopPSampler  # noqa: E402


def _logprobs(size: int, scale: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=size) * scale
    return logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()


def _reference(row: np.ndarray, top_p: float) -> set[int]:
    kept = np.array(apply_top_p(mx.array(row[None].astype(np.float32)), top_p))[0]
    return set(np.nonzero(np.isfinite(kept))[0].tolist())


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
@pytest.mark.parametrize(("size", "scale"), [(64, 1.0), (64, 3.0), (2000, 2.0), (49152, 8.0)])
def test_nucleus_is_mlx_lm_top_p(size: int, scale: float, top_p: float) -> None:
    for seed in range(3):
        row = _logprobs(size, scale, seed)
        ids, values = TopPSampler(0.3, top_p, 0).nucleus(row)
        assert set(ids.tolist()) == _reference(row, top_p)
        assert list(values) == sorted(values)


def test_flat_distribution_reaches_past_the_candidates() -> None:
    row = _logprobs(TOP_P_CANDIDATES * 4, 0.01, 1)  # nearly uniform: the nucleus is ~95% of the vocabulary
    ids, _ = TopPSampler(1.0, 0.95, 0).nucleus(row)
    assert len(ids) > TOP_P_CANDIDATES
    assert set(ids.tolist()) == _reference(row, 0.95)


def test_draws_follow_the_tempered_nucleus() -> None:
    row = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    sampler = TopPSampler(0.5, 0.9, seed=3)
    draws = np.array([sampler.sample_row(row) for _ in range(4000)])
    assert 3 not in draws  # outside the 0.9 nucleus {0, 1, 2}
    tempered = np.array([0.5, 0.3, 0.15]) ** 2
    expected = tempered / tempered.sum()
    observed = np.bincount(draws, minlength=3)[:3] / len(draws)
    assert np.abs(observed - expected).max() < 0.03


def test_seeded_and_batched_calls() -> None:
    rows = np.stack([_logprobs(300, 2.0, s) for s in range(3)])
    a = TopPSampler(0.7, 0.95, seed=11)(mx.array(rows.astype(np.float32)))
    b = TopPSampler(0.7, 0.95, seed=11)(mx.array(rows.astype(np.float32)))
    assert a.dtype == mx.uint32 and a.shape == (3,)
    assert a.tolist() == b.tolist()
