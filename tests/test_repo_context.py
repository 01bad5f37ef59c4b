"""Repository-wide context in answer prompts (issue 11 part 2).

Chunks carry the symbols they define and use; answer prompts add the signatures and first
docstring lines of repo symbols a chunk uses but does not define, within a token budget
counted with a real tokenizer; provenance lists every file a prompt drew on; the answer's
ledger key follows what the prompt shows (a used definition changing regenerates the
answer, an unrelated file changing does not).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from dagster import materialize

from benchmarks.fault_server import FaultServer
from cicdllm_assets.generation.symbols import (
    REPO_CONTEXT_HEADER,
    RepoIndex,
    chunk_symbols,
    imported_names,
    repo_context,
)
from cicdllm_assets.llm.tokenizer_counter import TokenCounter
from cicdllm_assets.quality.secrets import redact_field
from tests.generation_support import chain_assets, chain_project, chain_resources, read_table
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture

AWS_KEY = "AKIAQ3EGRL7VXJ2B4NZT"
HELPERS = "".join(
    f'def helper_{i}(value: int, scale: float = 1.0) -> float:\n    """Scale step {i}: multiply value by scale."""\n'
    f"    return value * scale + {i}\n\n\n"
    for i in range(12)
)
CALLER = (
    "from lib.helpers import helper_0\n\n\ndef total(values):\n    return sum("
    + " + ".join(f"helper_{i}(v)" for i in range(12))
    + " for v in values)\n"
)


def _index(files: dict[str, str]) -> RepoIndex:
    return RepoIndex.build((path, "python", "", text) for path, text in files.items())


def test_chunk_symbols_defines_uses_params_raises_and_methods() -> None:
    text = (
        "class Store(BaseStore):\n"
        "    def save(self, item: Item, force=False):\n"
        "        if not item:\n"
        "            raise StoreError('empty')\n"
        "        record = encode(item)\n"
        "        self.backend.write(record)\n"
        "        return record\n"
    )
    symbols = chunk_symbols(text, "python")
    assert {"Store", "save", "record"} <= set(symbols.defines)
    assert symbols.uses[:2] == ("StoreError", "encode")  # calls first, in order
    assert {"BaseStore", "Item"} <= set(symbols.uses) and "record" not in symbols.uses
    assert symbols.params == ("item", "force") and symbols.raises == ("StoreError",)
    assert symbols.methods == ("write",)
    # Fragments that do not parse, and other languages, fall back to regular expressions.
    fragment = chunk_symbols("    x = compute(a)\n  y = other(", "python")
    assert {"compute", "other"} <= set(fragment.uses)
    assert imported_names("from a.b import c, d as e\nfrom f import (g)\nimport h") == ["c", "d", "g"]


def test_context_lists_used_definitions_from_other_files_not_inventions() -> None:
    files = {
        "lib/helpers.py": HELPERS,
        "lib/store.py": 'class BaseStore:\n    """Where records live."""\n',
        "lib/dup1.py": "def run():\n    pass\n",
        "lib/dup2.py": "def run():\n    pass\n",
        "lib/dup3.py": "def run():\n    pass\n",
    }
    index = _index(files)
    text = "class Cache(BaseStore):\n    def get(self):\n        return helper_3(run(), invented_thing())\n"
    context = repo_context(text, "python", "", index, 1000, len)
    lines = context.text.splitlines()
    assert lines[0] == REPO_CONTEXT_HEADER
    assert lines[1] == (
        "- lib/helpers.py: def helper_3(value: int, scale: float=1.0) -> float - Scale step 3: multiply value by scale."
    )
    assert lines[2] == "- lib/store.py: class BaseStore - Where records live."
    assert len(lines) == 3  # run() is defined three times (ambiguous), invented_thing nowhere
    assert context.files == ("lib/helpers.py", "lib/store.py")
    assert repo_context(text, "python", "", index, 0, len).text == ""


def test_method_chunks_index_methods_and_keep_their_class_header_a_class() -> None:
    index = RepoIndex.build(
        [
            ("a.py", "python", "Store.save", "class Store:\n    def save(self, item):\n        return item\n"),
            ("b.py", "python", "Cache.load", "def load(self):\n    return 1\n"),
        ]
    )
    assert [d.method for d in index.by_name["Store"]] == [False]
    assert [d.method for d in index.by_name["save"]] == [True]
    assert [d.method for d in index.by_name["load"]] == [True]
    text = "def run(store):\n    store.save(Store())\n    return load()\n"
    context = repo_context(text, "python", "", index, 1000, len)
    # Store() and store.save() resolve; load() called as a function is not the method Cache.load
    assert context.names == ("Store", "save")


def test_budget_is_never_exceeded_with_real_token_counts(tiny_model_dir: Path) -> None:  # noqa: F811
    counter = TokenCounter(tiny_model_dir)
    index = _index({"lib/helpers.py": HELPERS})
    full = repo_context(CALLER, "python", "from lib.helpers import helper_0", index, 100_000, counter.count)
    assert len(full.names) == 12
    full_tokens = counter.count(full.text)
    assert full.tokens == full_tokens
    sizes = set()
    for budget in range(0, full_tokens + 40, 9):
        context = repo_context(CALLER, "python", "", index, budget, counter.count)
        assert counter.count(context.text) <= budget
        assert context.tokens == (counter.count(context.text) if context.text else 0)
        sizes.add(len(context.names))
    assert 0 in sizes and 12 in sizes and len(sizes) > 5  # the budget really cuts in between


def test_context_entries_are_redacted() -> None:
    index = _index({"lib/keys.py": f'def signer():\n    """Signs with {AWS_KEY} by default."""\n'})
    context = repo_context(
        "def run():\n    return signer()\n", "python", "", index, 500, len, lambda s: redact_field(s) or s
    )
    assert "signer" in context.text and AWS_KEY not in context.text


# ---------------------------------------------------------------------------- on the real chain

FILES = {
    "calc/add.py": 'def add(a, b):\n    """Sum of two numbers, in order."""\n    return a + b\n',
    "calc/report.py": (
        "from calc.add import add\n\n\ndef report(values):\n"
        "    total = 0\n    for v in values:\n        total = add(total, v)\n    return f'total={total}'\n"
    ),
    "util/io.py": (
        "def read_text(path):\n    with open(path, encoding='utf-8') as handle:\n        return handle.read()\n"
    ),
}


class Recorder:
    """A scripted OpenAI responder that keeps the answer prompts it saw."""

    def __init__(self) -> None:
        self.answer_prompts: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> str:
        last = body["messages"][-1]["content"]
        if "numbered list" in last:
            return json.dumps(["How is the total computed here?"])
        with self.lock:
            self.answer_prompts.append(last)
        return "It adds each value to the running total with `add` and returns the formatted total string."


@pytest.mark.slow
def test_answer_prompts_carry_repo_context_and_keys_follow_it(
    project: Path,
    make_git_repo,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    repo = make_git_repo("context", FILES)
    recorder = Recorder()
    with FaultServer(capacity=4, responder=recorder) as server:
        settings, key, instance = chain_project(project, repo.path, server.base_url, tiny_model_dir, 512)

        def run() -> None:
            result = materialize(
                chain_assets("answers"), partition_key=key, instance=instance, resources=chain_resources()
            )
            assert result.success

        run()
        report_prompts = [p for p in recorder.answer_prompts if "calc/add.py: def add" in p]
        assert len(report_prompts) == 1, recorder.answer_prompts
        assert "- calc/add.py: def add(a, b) - Sum of two numbers, in order." in report_prompts[0]
        answers = {r["path"]: r for r in read_table(settings, "answers", key).to_pylist()}
        assert answers["calc/report.py"]["context_files"] == ["calc/report.py", "calc/add.py"]
        assert answers["util/io.py"]["context_files"] == ["util/io.py"]
        assert json.loads(answers["calc/report.py"]["params"])["repo_context"]

        # An unrelated file changes: no answer prompt changes, nothing is generated again.
        recorder.answer_prompts.clear()
        (repo.path / "util/io.py").write_text(FILES["util/io.py"] + "\n\ndef size(path):\n    return 0\n")
        repo.commit("unrelated")
        run()
        assert recorder.answer_prompts  # util/io.py's own chunks changed
        assert [p for p in recorder.answer_prompts if "calc/add.py: def add" in p] == []

        # The docstring of a definition report() uses changes: its answer is generated again.
        (repo.path / "calc/add.py").write_text(FILES["calc/add.py"].replace("in order", "left to right"))
        repo.commit("docstring")
        run()
        assert any("Sum of two numbers, left to right." in p for p in recorder.answer_prompts)
