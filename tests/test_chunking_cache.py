"""The per-blob plan cache (LRU + SQLite), tokenizer call counting, chunk keys and redaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cicdllm_assets.chunking.cache import PlanCache
from cicdllm_assets.chunking.rows import ChunkRowBuilder, FileForChunks, chunk_key, imports_used
from cicdllm_assets.chunking.service import Chunker, PlanRequest
from cicdllm_assets.llm.tokenizer_counter import TokenCounter
from cicdllm_assets.storage.state import StateStore
from tests.discovery_helpers import train_tokenizer

PY = "import os\n\n\ndef f(x):\n    return x + 1\n\n\nclass A:\n    def g(self):\n        return os.getcwd()\n"
JS = "export function add(a, b) {\n  return a + b;\n}\n"


@pytest.fixture
def tok_path(tmp_path: Path) -> Path:
    return train_tokenizer(tmp_path / "tok" / "tokenizer.json")


def requests() -> list[PlanRequest]:
    return [PlanRequest("a" * 40, "python", PY), PlanRequest("b" * 40, "javascript", JS)]


def test_unchanged_blob_is_never_tokenized_again(tmp_path: Path, tok_path: Path) -> None:
    db = tmp_path / "state.db"
    counter = TokenCounter(tok_path)
    first = Chunker(counter, 64, PlanCache(StateStore(db), lru_size=8))
    plans = first.plan_many(requests())
    assert counter.calls == 1 and counter.texts_encoded == 2  # one batched encode for both files
    assert first.stats.cache_misses == 2 and first.stats.cache_hits == 0

    # same process: LRU hit
    again = first.plan_many(requests())
    assert again == plans and counter.calls == 1 and first.stats.cache_hits == 2

    # a new process (fresh LRU, fresh tokenizer object) on the same state db: SQLite hit
    fresh_counter = TokenCounter(tok_path)
    second = Chunker(fresh_counter, 64, PlanCache(StateStore(db), lru_size=8))
    assert second.plan_many(list(reversed(requests()))) == list(reversed(plans))
    assert fresh_counter.calls == 0 and second.stats.cache_hits == 2

    # a different budget is a different plan: computed, not served from the cache
    third = Chunker(fresh_counter, 32, PlanCache(StateStore(db), lru_size=8))
    third.plan_many(requests())
    assert fresh_counter.calls == 1 and third.stats.cache_misses == 2

    # the same blob twice in one batch is encoded once
    dup_counter = TokenCounter(tok_path)
    dup = Chunker(dup_counter, 48, PlanCache(None, 0))
    dup.plan_many([PlanRequest("c" * 40, "python", PY)] * 3)
    assert dup_counter.texts_encoded == 1


def test_lru_is_bounded(tok_path: Path) -> None:
    counter = TokenCounter(tok_path)
    cache = PlanCache(None, lru_size=1)
    chunker = Chunker(counter, 64, cache)
    chunker.plan_many([requests()[0]])
    chunker.plan_many([requests()[1]])  # evicts the first
    chunker.plan_many([requests()[0]])
    assert counter.calls == 3


def test_chunk_keys_are_content_identity() -> None:
    fields = ("repo", "pkg/mod.py", "python", "handler", "import os", "def handler():\n    return os.sep\n")
    key = chunk_key(*fields)
    assert key == chunk_key(*fields) and len(key) == 32
    # line ends and trailing blanks are normalised away (the prompt shows the normalised code)
    assert key == chunk_key(*fields[:5], "def handler():  \r\n    return os.sep\t\r\n\n")
    for i, other in enumerate(("repo2", "pkg/other.py", "text", "main", "import sys", "def handler():\n    pass\n")):
        assert chunk_key(*fields[:i], other, *fields[i + 1 :]) != key, i
    assert imports_used("import os\nimport sys\nfrom a.b import (c, d)", "x = os.sep + d") == (
        "import os\nfrom a.b import (c, d)"
    )
    assert imports_used("import os", "return 1") == ""


@dataclass
class InflatingRedactor:
    """A real (not mocked) redactor for the test: replaces every 'x' with a long placeholder."""

    calls: list[str] = field(default_factory=list)

    def __call__(self, text: str, path: str) -> object:
        self.calls.append(path)
        count = text.count("x")

        @dataclass
        class Result:
            text: str
            total: int

        return Result(text.replace("x", " [REDACTED:token_value_placeholder] "), count)


def test_redaction_runs_on_every_chunk_and_budget_is_rechecked(tok_path: Path) -> None:
    counter = TokenCounter(tok_path)
    chunker = Chunker(counter, 64)
    text = "".join(f"value_{i} = x + x\n" for i in range(60))
    plan = chunker.plan_many([PlanRequest("d" * 40, "python", text)])[0]
    redactor = InflatingRedactor()
    builder = ChunkRowBuilder("r", "c" * 40, "MIT", 64, counter, redactor=redactor)
    builder.add_file(FileForChunks("a.py", "d" * 40, "python", text), plan)
    table = builder.table().to_pylist()
    assert len(redactor.calls) == len(plan.chunks)
    assert builder.stats.resplit_chunks > 0 and builder.stats.redactions == 120
    assert sum(row["redactions"] for row in table) == 120
    for row in table:
        assert "x" not in row["text"].replace("REDACTED", "").replace("token_value_placeholder", "")
        assert counter.count(row["text"]) == row["token_count"] <= 64
    assert len({row["chunk_key"] for row in table}) == len(table)


def test_real_secret_redaction_hook(tok_path: Path) -> None:
    counter = TokenCounter(tok_path)
    chunker = Chunker(counter, 128)
    secret = "AKIA" + "QWERTYUIOPASDFGH"
    text = f'AWS_ACCESS_KEY_ID = "{secret}"\nregion = "eu-west-1"\n'
    plan = chunker.plan_many([PlanRequest("e" * 40, "python", text)])[0]
    builder = ChunkRowBuilder("r", "c" * 40, None, 128, counter)
    builder.add_file(FileForChunks("settings.py", "e" * 40, "python", text), plan)
    rows = builder.table().to_pylist()
    assert secret not in "".join(r["text"] for r in rows)
    assert sum(r["redactions"] for r in rows) >= 1


def test_redaction_results_are_cached_per_text_and_detector(tmp_path: Path, tok_path: Path) -> None:
    from cicdllm_assets.chunking.redaction_cache import RedactionCache

    counter = TokenCounter(tok_path)
    chunker = Chunker(counter, 64)
    text = "".join(f"value_{i} = x + 1\n" for i in range(40))
    plan = chunker.plan_many([PlanRequest("f" * 40, "python", text)])[0]
    file = FileForChunks("a.py", "f" * 40, "python", text)
    state = StateStore(tmp_path / "state.db")

    def build(detector: str) -> tuple[InflatingRedactor, list[dict]]:
        redactor = InflatingRedactor()
        builder = ChunkRowBuilder(
            "r",
            "c" * 40,
            None,
            64,
            counter,
            redactor=redactor,
            redaction_cache=RedactionCache(state, detector=detector),
        )
        builder.add_file(file, plan)
        return redactor, builder.table().to_pylist()

    first_redactor, first = build("v1")
    assert len(first_redactor.calls) == len(plan.chunks)
    second_redactor, second = build("v1")
    assert second_redactor.calls == [] and second == first  # served from the cache
    third_redactor, _ = build("v2")  # a new detector version redacts again
    assert len(third_redactor.calls) == len(plan.chunks)
