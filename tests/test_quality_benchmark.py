"""The quality benchmark compares distinct-2 of two question sets at equal size."""

from __future__ import annotations

from benchmarks.quality import distinct_2_at_size
from cicdllm_assets.quality.variety import distinct_n

TEMPLATED = [f"What does `f{i}` return when `x{i}` is empty?" for i in range(30)]


def test_distinct_2_at_size_is_exact_for_the_whole_set_and_higher_for_a_smaller_one() -> None:
    assert distinct_2_at_size(TEMPLATED, len(TEMPLATED)) == distinct_n(TEMPLATED, 2)
    # a larger set of the same template repeats more bigrams: the whole set scores lower
    smaller = distinct_2_at_size(TEMPLATED, 10)
    assert smaller > distinct_n(TEMPLATED, 2)
    assert smaller == distinct_2_at_size(TEMPLATED, 10)  # seeded draws
