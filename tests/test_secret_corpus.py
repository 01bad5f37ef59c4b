"""Every kind of the secret corpus is redacted in every position it is planted in."""

from __future__ import annotations

import pytest

from cicdllm_assets.quality.secrets import find_secrets, redact_secrets
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
