"""Per-answer filters, grounding and (near-)duplicate detection within and across repositories."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from cicdllm_assets.config import load_settings
from cicdllm_assets.quality.dedup import find_duplicates, similarity
from cicdllm_assets.quality.filters import (
    Rejection,
    check_echo,
    check_pair,
    check_question,
    check_refusal,
    check_repetitive,
    check_truncated,
)
from cicdllm_assets.quality.grounding import claimed_identifiers, grounding_score
from cicdllm_assets.quality.pairs import filter_pairs
from tests.export_fixtures import answer_row, chunk_row, export_dataset

CHUNK = (
    "from cicdllm.config import load_settings\n\n"
    "def build_index(repo_path, max_files=100):\n"
    "    settings = load_settings()\n"
    "    files = scan_repository(repo_path)[:max_files]\n"
    "    return IndexBuilder(settings).add_all(files)\n"
)


@pytest.mark.parametrize(
    "answer",
    [
        "I'm sorry, but I can't help with that.",
        "As an AI language model, I cannot see your files, but generally this builds an index.",
        "Unfortunately, I cannot determine what this code does without more context.",
        "I don't have access to the code you are referring to, so here is a guess.",
        "Output:\n```\nNothing here\n```\nThe code does not fully answer this question.",
    ],
)
def test_refusals(answer: str) -> None:
    assert check_refusal(answer)


def test_not_refusals() -> None:
    assert check_refusal("It builds an index; sorry states are not handled, which is a known gap.") is None


@pytest.mark.parametrize(
    ("answer", "tokens", "limit", "truncated"),
    [
        ("It returns the index built from the scanned files.", 40, 256, False),
        ("It returns the index built from the scanned files.", 256, 256, True),
        ("Example:\n```python\nbuild_index('.')\n", 40, 256, True),
        ("It loads the settings, scans the repository and then", 40, 256, True),
        ("It loads the settings, scans the repository, and", 40, 256, True),
        ("Steps:\n- load the settings\n- scan the repository", 40, 256, False),
        ("Usage:\n```python\nindex = build_index('.')\n```", 40, 256, False),
    ],
)
def test_truncation(answer: str, tokens: int, limit: int, truncated: bool) -> None:
    assert bool(check_truncated(answer, tokens, limit)) is truncated


def test_grounding_uses_code_and_backticks_only() -> None:
    grounded = (
        "`build_index` calls `load_settings`, then `scan_repository` and hands the files to `IndexBuilder`:\n"
        "```python\nindex = build_index('/src', max_files=10)\nprint(index)\n```"
    )
    score = grounding_score(grounded, CHUNK)
    assert score.judged and score.ratio == 1.0
    # names the example defines itself do not count
    assert "index" not in claimed_identifiers(grounded) and "print" not in claimed_identifiers(grounded)
    invented = "It uses `RepoCrawler.walk`, `TokenBudget` and `flush_index_cache` before calling `build_index`."
    score = grounding_score(invented, CHUNK)
    assert score.judged and score.ratio < 0.6 and "RepoCrawler" in score.missing
    # plain prose claims nothing and passes
    assert not grounding_score("It builds an index of the repository files.", CHUNK).judged


ONE_OF_FOUR_INVENTED = "`build_index` calls `load_settings` and `scan_repository`, then `merge_index_shards`."
ONE_OF_FIVE_UNKNOWN = (
    "`build_index` calls `load_settings` and `scan_repository`, then `IndexBuilder` and `requests_cache_install`."
)


def test_grounding_threshold_default_and_setting() -> None:
    """80 % by default: one invented name in four rejects, one unknown in five passes; 1.0 passes none."""
    base = {"question": "What does build_index do?", "path": "idx.py"}
    assert grounding_score(ONE_OF_FOUR_INVENTED, CHUNK).ratio == 0.75
    assert grounding_score(ONE_OF_FIVE_UNKNOWN, CHUNK).ratio == 0.8
    rejection = check_pair({**base, "answer": ONE_OF_FOUR_INVENTED}, CHUNK)
    assert rejection is not None and rejection.reason == "not_grounded" and "merge_index_shards" in rejection.detail
    assert check_pair({**base, "answer": ONE_OF_FIVE_UNKNOWN}, CHUNK) is None
    assert check_pair({**base, "answer": ONE_OF_FIVE_UNKNOWN}, CHUNK, min_grounded_ratio=1.0) is not None
    assert check_pair({**base, "answer": ONE_OF_FOUR_INVENTED}, CHUNK, min_grounded_ratio=0.6) is None


@pytest.mark.parametrize(
    ("question", "bad"),
    [
        ("What is the mean of", True),
        ("What is the purpose of `slugify, truncate?", True),
        ("How does build_index use `load_settings`?", False),
        ("Usage of build_index, scan_repository", False),
    ],
)
def test_truncated_questions(question: str, bad: bool) -> None:
    assert bool(check_question(question)) is bad


def test_answers_that_only_echo_the_chunk() -> None:
    assert check_echo("def build_index(repo_path, max_files=100):\n    settings = load_settings()\n\nYes.", CHUNK)
    quoting = (
        "It is defined as\n```python\ndef build_index(repo_path, max_files=100):\n```\n"
        "and returns an IndexBuilder holding at most max_files scanned files."
    )
    assert check_echo(quoting, CHUNK) is None


def test_check_pair_reasons() -> None:
    base = {"question": "What does build_index do?", "params": json.dumps({"max_tokens": 128}), "completion_tokens": 30}
    assert check_pair({**base, "answer": "   "}, CHUNK).reason == "empty_answer"  # type: ignore[union-attr]
    assert check_pair({**base, "question": "", "answer": "x" * 40}, CHUNK).reason == "empty_question"  # type: ignore[union-attr]
    assert check_pair({**base, "answer": "Builds it."}, CHUNK).reason == "too_short"  # type: ignore[union-attr]
    ok = "`build_index` loads the settings with `load_settings` and returns an `IndexBuilder` result."
    assert check_pair({**base, "answer": ok}, CHUNK) is None


def test_near_duplicates_collapse_and_distinct_pairs_stay() -> None:
    answer = (
        "build_index loads the settings, scans the repository for at most max_files files and returns "
        "an IndexBuilder with every file added."
    )
    questions = [
        "What does build_index do?",
        "What does the build_index do?",
        "What does build_index do ?",
        "How can build_index fail when the repository path does not exist?",
    ]
    answers = [
        answer,
        answer,
        answer,
        "scan_repository raises FileNotFoundError for a missing path, so build_index propagates it.",
    ]
    assert similarity(questions[0] + " \n " + answer, questions[1] + " \n " + answer) > 0.85
    dups = find_duplicates(questions, answers, 0.85)
    assert {(d.index, d.kept, d.kind) for d in dups} == {(1, 0, "near_duplicate"), (2, 0, "duplicate")}
    # threshold 1.0 keeps only exact duplicates
    assert {d.kind for d in find_duplicates(questions, answers, 1.0)} == {"duplicate"}


SHORT_ANSWER = (
    "`build_index` loads settings via `load_settings`, scans the repository and returns an "
    "`IndexBuilder` holding every file."
)


def test_filter_pairs_marks_every_row() -> None:
    chunk = chunk_row("acme/a", "idx.py", CHUNK)
    rows = [
        answer_row(chunk, "What does build_index do?", SHORT_ANSWER),
        answer_row(chunk, "What does build_index do here?", SHORT_ANSWER),
        answer_row(
            {**chunk, "chunk_key": "gone"},
            "What did the old code do?",
            "It used to build the index in a different way entirely, long ago.",
        ),
    ]
    result = filter_pairs(pa.Table.from_pylist(rows), pa.Table.from_pylist([chunk]), 0.85)
    table = result.table
    assert table.num_rows == 3
    assert {"accepted", "reject_reason", "reject_detail", "context"} <= set(table.column_names)
    assert result.rejections == {"missing_chunk": 1, "near_duplicate": 1}
    assert table.column("context").to_pylist()[0] == CHUNK


def test_cross_repo_duplicates_removed_in_training_dataset(project: Path) -> None:
    settings = load_settings()
    answer = "`build_index` loads settings via `load_settings` and returns an `IndexBuilder` with all files."
    tables = []
    for repo in ("acme/a", "fork/a"):  # a vendored copy: same file, same question, same answer
        chunk = chunk_row(repo, "idx.py", CHUNK)
        rows = [
            answer_row(chunk, "What does build_index do?", answer),
            answer_row(
                chunk,
                f"Who maintains the {repo} copy of build_index?",
                f"The {repo} maintainers keep `build_index` in sync; it calls `scan_repository`.",
            ),
        ]
        tables.append(filter_pairs(pa.Table.from_pylist(rows), pa.Table.from_pylist([chunk]), 0.85).table)
    result = export_dataset(pa.concat_tables(tables), settings, formats=["jsonl"])
    assert result.rejections == {"cross_repo_duplicate": 1}
    assert result.exported_pairs == 3


def test_looping_answers_are_repetitive_and_normal_ones_are_not() -> None:
    looping = "The function returns a string of the format " + "`<name:<stat_size>:<dtype_size>` and " * 15 + "so on."
    assert check_repetitive(looping)
    sentence = "It takes a list of pipeline conditions and applies them to the specs of assets that have none. "
    assert check_repetitive(sentence * 5)
    normal = (
        "The function reads the file, splits it into lines and returns the lines that are not empty. "
        "It raises ValueError when the path does not exist, and it returns an empty list for an empty file. "
        "The function is used by the loader to read the configuration."
    )
    assert check_repetitive(normal) is None
    assert check_repetitive("short short short short short") is None
    chunk = chunk_row("acme-demo", "f.py", "def f():\n    return 1\n")
    rejection = check_pair(answer_row(chunk, "What does f return?", looping), chunk["text"])
    assert rejection is not None and rejection.reason == "repetitive"


def test_truncation_uses_the_recorded_finish_reason_and_the_effective_budget() -> None:
    answer = "It returns the index that build_index builds from the scanned files."
    row = {"question": "What does build_index return?", "answer": answer, "params": json.dumps({"max_tokens": 256})}
    # Cut at a budget capped to 100 tokens to fit the context window: the backend said "length".
    cut = {**row, "completion_tokens": 100, "max_tokens": 100, "finish_reason": "length"}
    assert check_pair(cut, CHUNK) == Rejection("truncated", "stopped at the length limit (finish_reason=length)")
    # Same budget, no finish_reason recorded (an older ledger row): the effective budget counts, not params.
    unknown = {**cut, "finish_reason": None}
    assert check_pair(unknown, CHUNK) == Rejection("truncated", "stopped at the length limit (100 >= 100 tokens)")
    # The model stopped by itself exactly at the budget: complete, kept.
    stopped = {**row, "completion_tokens": 256, "max_tokens": 256, "finish_reason": "stop"}
    assert check_pair(stopped, CHUNK) is None
