"""Question parsing: JSON, fenced JSON, prose around JSON, objects, lists, question marks, garbage."""

from __future__ import annotations

import pytest

from cicdllm_assets.generation.parsing import normalize_question, parse_questions

Q1 = "What does `add` return for two integers?"
Q2 = "How does `Parser.parse` split its input?"


@pytest.mark.parametrize(
    "text",
    [
        f'["{Q1}", "{Q2}"]',
        f'```json\n["{Q1}", "{Q2}"]\n```',
        f'Here are the questions:\n```\n["{Q1}",\n "{Q2}"]\n```\nHope this helps!',
        f'Sure! ["{Q1}", "{Q2}"] Let me know if you need more.',
        f'[{{"question": "{Q1}"}}, {{"question": "{Q2}", "difficulty": "easy"}}]',
        f'{{"questions": ["{Q1}", "{Q2}"]}}',
    ],
)
def test_json_forms(text: str) -> None:
    parsed = parse_questions(text, min_chars=12)
    assert parsed.method == "json"
    assert parsed.questions == [Q1, Q2]


@pytest.mark.parametrize(
    "text",
    [
        f"1. {Q1}\n2. {Q2}\n",
        f"Questions:\n1) {Q1}\n2) {Q2}",
        f"- {Q1}\n- {Q2}",
        f"* **{Q1}**\n* {Q2}",
        f"• {Q1}\n• {Q2}",
        f"Q1: {Q1}\nQ2: {Q2}",
    ],
)
def test_numbered_and_bulleted_lists(text: str) -> None:
    parsed = parse_questions(text, min_chars=12)
    assert parsed.method == "list"
    assert parsed.questions == [Q1, Q2]


def test_lines_ending_with_question_marks() -> None:
    text = f"Let me think about this code.\n{Q1}\nThat is a good one.\n{Q2}\n"
    parsed = parse_questions(text, min_chars=12)
    assert parsed.method == "question_marks"
    assert parsed.questions == [Q1, Q2]


def test_garbage_is_a_parse_failure() -> None:
    for text in ["", "   ", "asdf qwer zxcv", "[1, 2, 3]", '{"foo": "bar"}', "```\n```"]:
        parsed = parse_questions(text, min_chars=12)
        assert not parsed.ok and parsed.method == "none" and parsed.questions == []


def test_drops_empty_short_and_duplicate_questions_and_caps() -> None:
    text = f'["", "Why?", "{Q1}", "{Q1.upper()}", "  {Q1}  ", "{Q2}", "How is `sub` different from `add`?"]'
    parsed = parse_questions(text, min_chars=12, limit=2)
    assert parsed.questions == [Q1, Q2]
    assert parsed.dropped == {"empty": 1, "too_short": 1, "duplicate": 2, "over_limit": 1}


def test_json_with_only_unusable_items_falls_back_to_other_strategies() -> None:
    text = f'["ok"]\n1. {Q1}'
    parsed = parse_questions(text, min_chars=12)
    assert parsed.questions == [Q1]


def test_think_blocks_are_ignored() -> None:
    text = f'<think>What should I ask? Maybe "why?"</think>["{Q1}"]'
    assert parse_questions(text, min_chars=12).questions == [Q1]


def test_normalize_question() -> None:
    assert normalize_question("  What   IS this?? ") == normalize_question("what is this")


def test_list_mixing_questions_and_notes_keeps_the_questions() -> None:
    text = (
        "Here are two questions:\n\n"
        f"1. {Q1}\n    - The function `add` is the main purpose of the script and returns a sum.\n\n"
        f"2. {Q2}\n    - It splits on whitespace.\n"
    )
    assert parse_questions(text, min_chars=12).questions == [Q1, Q2]


def test_questions_inside_prose_and_placeholder_echoes() -> None:
    text = (
        "I'm happy to help. Example: What does ... return when ...? "
        f"A good first one is this. {Q1} And also: {Q2}\nThat is all."
    )
    parsed = parse_questions(text, min_chars=12)
    assert parsed.method == "question_marks"
    assert Q2 in parsed.questions and all("..." not in q for q in parsed.questions)
    assert parsed.dropped.get("placeholder") == 1


def test_headings_and_trailing_statements() -> None:
    text = f"1. Why it is written this way:\n2. {Q1} The error occurs when the file does not exist.\n3. {Q2}\n"
    parsed = parse_questions(text, min_chars=12)
    assert parsed.questions == [Q1, Q2]


def test_statements_and_bare_names_are_not_questions() -> None:
    """Seen exported by the embedded model: a bare identifier and a statement, both from a JSON
    array, passed as questions. Only questions and instructions ("Explain ...") are kept."""
    text = (
        '["error_message", "When testing a function, you should pass the expected output to the function.",'
        ' "What does `load` return?", "Explain how `retry` backs off"]'
    )
    parsed = parse_questions(text)
    assert parsed.questions == ["What does `load` return?", "Explain how `retry` backs off"]
    assert parsed.dropped == {"not_a_question": 2}
