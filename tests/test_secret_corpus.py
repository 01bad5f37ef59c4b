"""Every kind of the secret corpus is redacted in every position it is planted in."""

from __future__ import annotations

import random

import pytest

from cicdllm_assets.quality.secrets import find_secrets, may_hold_secrets, redact_secrets
from tests.secret_corpus import KINDS, corpus_files, planted_values

FILES = corpus_files()
PLANTED = planted_values()


def test_corpus_is_broad() -> None:
    assert len({kind.name for kind in KINDS}) >= 15
    assert sum(1 for kind in KINDS if kind.in_names) >= 10
    assert len(FILES) > 2 * len(KINDS)


@pytest.mark.parametrize("path", sorted(FILES))
def test_every_planted_value_is_redacted(path: str) -> None:
    for text, hint in ((FILES[path], path), (path, "")):
        redacted = redact_secrets(text, hint).text
        leaked = [value[:16] for value in PLANTED if value in redacted]
        assert leaked == [], f"{path}: {leaked}"
        assert find_secrets(redacted, hint) == []
        assert find_secrets(redacted) == []  # what the gate before the backend checks: nothing left


def test_batch_prefilter_flags_every_text_holding_a_secret() -> None:
    """One prefilter pass over a batch flags each text a detector fires on, and no clean text."""
    clean = [f"How does handler_{i} read the cache?\nIt calls cache.get(request.key) and returns." for i in range(50)]
    lines = [line for text in FILES.values() for line in text.splitlines()]
    texts = [*clean, *FILES.values(), *lines]
    random.Random(3).shuffle(texts)
    flags = may_hold_secrets(texts)
    holding = [i for i, text in enumerate(texts) if find_secrets(text)]
    assert len(holding) > len(KINDS)
    assert [i for i in holding if not flags[i]] == []
    assert not any(flag for text, flag in zip(texts, flags, strict=True) if text in clean)
