"""Verified answers on the real chain: Python code blocks must parse, and grounding uses the whole repo.

A real git repo of three Python files goes through repositories -> ... -> qa_pairs, with the
OpenAI backend talking to a loopback server scripted to return known good and bad answers:
one that uses functions defined in *other* files of the repository (grounded), one that
invents functions (``not_grounded``) and one with a Python block that does not parse
(``code_invalid``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from dagster import materialize

from benchmarks.fault_server import FaultServer
from cicdllm_assets.quality.filters import CODE_INVALID, NOT_GROUNDED, check_code_blocks
from cicdllm_assets.quality.grounding import grounding_score, repo_symbol_index
from tests.generation_support import SAMPLE_FILES, chain_assets, chain_project, chain_resources, read_table
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture

CROSS_FILE = (
    "Callers combine `Parser.parse` with helpers defined in other modules:\n\n"
    "```python\ntokens = Parser().parse(read_text('notes.txt'))\n"
    "total = add(len(tokens), sub(4, 1))\nnames = list_names('docs')\n```\n\n"
    "The numbers come from `add` and `sub`, the text from `read_text`."
)
INVENTED = (
    "Callers wrap the parser before use:\n\n"
    "```python\nstream = merge_token_streams(Parser(), flatten_nested_tokens)\n"
    "validate_token_budget(stream)\n```\n\n"
    "Both `merge_token_streams` and `validate_token_budget` guard the input."
)
BROKEN_CODE = (
    "Call it with two numbers:\n\n```python\ndef total(a, b:\n    return add(a, b)\n```\n\n"
    "The call returns the sum of both arguments."
)
ADD_ERRORS = (
    "A `TypeError` surfaces when the operands cannot be combined; a caller can guard it like so:\n\n"
    "```python\ntry:\n    value = sub(add(1, 'two'), 3)\nexcept TypeError as error:\n    print(error)\n```\n\n"
    "Neither `add` nor `sub` validates its operands."
)
IO_CALLERS = (
    "The file helpers feed the parser; a caller reads a folder's files and counts their words:\n\n"
    "```python\nfor name in list_names('docs'):\n    words = Parser().count(read_text(name))\n```\n\n"
    "`list_names` returns the sorted names and `read_text` opens each with UTF-8."
)
_FILE = re.compile(r"^\s*File:\s*(\S+)", re.MULTILINE)


def scripted(body: dict[str, Any]) -> str:
    """Questions name the file; answers depend on the file and the question asked."""
    messages = body["messages"]
    path = _FILE.search("\n".join(m["content"] for m in messages)).group(1)  # type: ignore[union-attr]
    last = messages[-1]["content"]
    if "numbered list" in last or "JSON array" in last:
        return json.dumps([f"How do callers use the code in {path}?", f"Which errors can {path} raise on bad input?"])
    if path == "calc/parser.py":
        return CROSS_FILE if "callers" in last else INVENTED
    if path == "calc/add.py":
        return BROKEN_CODE if "callers" in last else ADD_ERRORS
    return IO_CALLERS


@pytest.mark.slow
def test_chain_rejects_invalid_code_and_grounds_in_the_whole_repo(
    project: Path,
    make_git_repo,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    repo = make_git_repo("verified", SAMPLE_FILES)
    with FaultServer(capacity=4, responder=scripted) as server:
        settings, key, instance = chain_project(project, repo.path, server.base_url, tiny_model_dir, 512)
        result = materialize(
            chain_assets("qa_pairs"), partition_key=key, instance=instance, resources=chain_resources()
        )
        assert result.success
    pairs = read_table(settings, "qa_pairs", key).to_pylist()
    verdicts = {(r["path"], "callers" in r["question"]): (r["accepted"], r["reject_reason"]) for r in pairs}
    assert len(pairs) == len(verdicts) == 6
    # calc/parser.py uses add/sub (calc/add.py) and read_text/list_names (util/io.py): grounded.
    assert verdicts[("calc/parser.py", True)] == (True, None)
    assert verdicts[("calc/parser.py", False)] == (False, NOT_GROUNDED)
    assert verdicts[("calc/add.py", True)] == (False, CODE_INVALID)
    assert verdicts[("calc/add.py", False)] == (True, None)
    assert verdicts[("util/io.py", True)] == (True, None)
    assert verdicts[("util/io.py", False)] == (True, None)
    metadata = result.asset_materializations_for_node("qa_pairs")[0].metadata
    assert metadata["rejected_code_invalid"].value == 1
    assert metadata["rejected_not_grounded"].value == 1
    detail = next(r["reject_detail"] for r in pairs if r["reject_reason"] == CODE_INVALID)
    assert "does not parse" in detail

    # export.min_grounded_ratio: 1 of the invented answer's 4 names resolves (25 %); at 0.2 it passes.
    # The answers come from the ledger: the server is down and no request is sent.
    with (project / "cicdllm.yaml").open("a", encoding="utf-8") as handle:
        handle.write("export:\n  min_grounded_ratio: 0.2\n")
    result = materialize(chain_assets("qa_pairs"), partition_key=key, instance=instance, resources=chain_resources())
    assert result.success
    pairs = read_table(settings, "qa_pairs", key).to_pylist()
    verdicts = {(r["path"], "callers" in r["question"]): (r["accepted"], r["reject_reason"]) for r in pairs}
    assert verdicts[("calc/parser.py", False)] == (True, None)
    assert verdicts[("calc/add.py", True)] == (False, CODE_INVALID)


def test_code_blocks_python_tags_untagged_and_doctest() -> None:
    assert check_code_blocks("```python\nx = compute(1)\n```") is None
    assert check_code_blocks("```py\ndef f(:\n```") is not None
    # Untagged blocks are Python only when the chunk is Python.
    assert check_code_blocks("```\nfn main() {}\n```", "rust") is None
    assert check_code_blocks("```\nfn main() {}\n```", "python") is not None
    # Other languages are not parsed as Python.
    assert check_code_blocks("```bash\nif [ -f x ]; then echo; fi\n```", "python") is None
    # Doctest blocks: only the prompt lines are code; indented blocks are dedented.
    assert check_code_blocks("```pycon\n>>> add(1, 2)\n3\n>>> for i in []:\n...     pass\n```") is None
    assert check_code_blocks("```python\n    x = 1\n    y = x\n```") is None


def test_repo_index_grounds_other_files_and_modules_but_not_inventions() -> None:
    index = repo_symbol_index(["Parser", "calc/add.py"], [SAMPLE_FILES["calc/add.py"]])
    assert {"add", "sub", "calc", "Parser"} <= index
    answer = "```python\nfrom calc import add\nvalue = sub(add(1, 2), 3)\nParser().parse('x y')\n```"
    assert grounding_score(answer, "class Parser: ...", repo_symbols=index).missing == ["parse"]
    assert grounding_score(answer, "class Parser: ...").missing == ["calc", "parse", "sub"]


def test_python_names_and_library_attributes_are_not_inventions_but_one_invented_name_is() -> None:
    chunk = "def build(repo):\n    return repo.files\n"
    imports = "import numpy as np\nfrom pathlib import Path"
    # names Python defines are real: a dunder, a builtin, a standard-library module
    for answer in (
        "It is skipped when `__name__` is not `__main__`.",
        "It is a `dataclasses` record with `__post_init__`.",
    ):
        score = grounding_score(answer, chunk, imports)
        assert score.checked >= 1 and not score.missing, answer
    # another library's API, reached through a module the chunk imports, cannot be checked: not counted
    assert grounding_score("It converts with `np.asarray_chkfinite`.", chunk, imports).checked == 0
    # one or two names are enough to judge: a single invented one is not grounded
    invented = grounding_score("It calls `repo_info` first.", chunk, imports)
    assert (invented.checked, invented.found, invented.missing) == (1, 0, ["repo_info"])
    assert invented.ratio < 0.6
    assert grounding_score("It calls `build` first.", chunk, imports).ratio == 1.0
    # a dunder-looking name Python does not define stays an invention
    assert grounding_score("It reads `__libprehensions__`.", chunk, imports).missing == ["__libprehensions__"]
