"""Robust parsing of the questions an LLM wrote.

Tried in order, first that yields questions wins:
1. a JSON array (the whole reply, inside a ``` fence, or embedded in prose) of
   strings or of objects with a ``question`` key;
2. a numbered or bulleted list (only its items ending with ``?`` if there are any);
3. sentences ending with ``?``.
Questions are cleaned (quotes, markdown, "Question:" labels), and empty, too short,
headings ending with ``:``, statements (neither ending with ``?`` nor an instruction such as "Explain
…"), placeholder echoes of the prompt's example ("What does ... return?") and duplicate
(case/space/punctuation-insensitive) ones are dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)```", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_LIST_ITEM = re.compile(r"^\s*(?:\(?\d{1,3}[.):]|[-*•+]|Q\d{0,3}\s*[.):])\s+(.*\S)\s*$", re.IGNORECASE)
_LABEL = re.compile(r"^\s*(?:\*\*)?(?:question|q)\s*\d{0,3}\s*[:.)-]\s*(?:\*\*)?\s*", re.IGNORECASE)
_OBJECT_KEYS = ("question", "q", "text", "content")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?:])\s+(?=[A-Z`\"'])")
_PLACEHOLDER_ECHO = re.compile(r"\.\.\.|…")
_TRAILING_STATEMENT = re.compile(r"(.*?\?)\s+[A-Z][^?]*$", re.DOTALL)
_INSTRUCTION = re.compile(
    r"^(?:explain|describe|show|write|give|list|compare|name|outline|summari[sz]e|suggest|provide|walk|tell|"
    r"identify|illustrate|demonstrate|trace)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ParsedQuestions:
    """Parsed questions and how they were found (``method`` is ``none`` on failure)."""

    questions: list[str]
    method: str
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when at least one question survived."""
        return bool(self.questions)


def normalize_question(text: str) -> str:
    """Key for duplicate detection: lower case, single spaces, no trailing punctuation."""
    return re.sub(r"\s+", " ", text).strip().lower().rstrip("?.!:; ")


def clean_question(text: str) -> str:
    """Strip list markers' leftovers, labels, quotes and markdown emphasis."""
    text = re.sub(r"\s+", " ", text).strip()
    text = _LABEL.sub("", text)
    for _ in range(2):
        text = text.strip().strip("*_`").strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1]
        text = text.rstrip(",").strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1]
    trailing = _TRAILING_STATEMENT.match(text)
    if trailing:  # "Why X? Because Y." -> "Why X?"
        text = trailing.group(1)
    return text.strip()


def _items_from_json(value: Any) -> list[str] | None:
    if isinstance(value, dict):
        for key in ("questions", "items", "data"):
            if isinstance(value.get(key), list):
                return _items_from_json(value[key])
        return None
    if not isinstance(value, list):
        return None
    items: list[str] = []
    for element in value:
        if isinstance(element, str):
            items.append(element)
        elif isinstance(element, dict):
            for key in _OBJECT_KEYS:
                if isinstance(element.get(key), str):
                    items.append(element[key])
                    break
    return items


def _json_candidates(text: str) -> Iterable[Any]:
    decoder = json.JSONDecoder()
    blocks = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for block in blocks:
        stripped = block.strip()
        try:
            yield json.loads(stripped)
            continue
        except ValueError:
            pass
        for match in re.finditer(r"[\[{]", stripped):
            try:
                value, _ = decoder.raw_decode(stripped, match.start())
            except ValueError:
                continue
            if isinstance(value, (list, dict)):
                yield value


def _from_json(text: str) -> list[str] | None:
    for value in _json_candidates(text):
        items = _items_from_json(value)
        if items:
            return items
    return None


def _ends_with_question_mark(item: str) -> bool:
    return clean_question(item).endswith("?")


def _from_list(text: str) -> list[str]:
    items = [m.group(1) for line in text.splitlines() if (m := _LIST_ITEM.match(line))]
    questions = [item for item in items if _ends_with_question_mark(item)]
    # A list mixing questions and explanations (sub-bullets, notes): keep the questions.
    return questions or items


def _from_question_marks(text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        for sentence in _SENTENCE_SPLIT.split(line.strip()):
            if sentence.endswith("?"):
                found.append(sentence)
    return found


def _filter(raw: list[str], min_chars: int, limit: int | None) -> tuple[list[str], dict[str, int]]:
    kept: list[str] = []
    seen: set[str] = set()
    dropped = {
        "empty": 0,
        "too_short": 0,
        "header": 0,
        "not_a_question": 0,
        "placeholder": 0,
        "duplicate": 0,
        "over_limit": 0,
    }
    for item in raw:
        question = clean_question(item)
        if not question:
            dropped["empty"] += 1
            continue
        if len(question) < min_chars:
            dropped["too_short"] += 1
            continue
        if question.endswith(":"):  # a heading such as "Why it is written this way:"
            dropped["header"] += 1
            continue
        if not question.endswith("?") and not _INSTRUCTION.match(question):
            # a bare name ("error_message") or a statement ("When testing a function, you should ...")
            dropped["not_a_question"] += 1
            continue
        if _PLACEHOLDER_ECHO.search(question):  # the prompt's example echoed back
            dropped["placeholder"] += 1
            continue
        key = normalize_question(question)
        if key in seen:
            dropped["duplicate"] += 1
            continue
        if limit is not None and len(kept) >= limit:
            dropped["over_limit"] += 1
            continue
        seen.add(key)
        kept.append(question)
    return kept, {k: v for k, v in dropped.items() if v}


def parse_questions(text: str, min_chars: int = 12, limit: int | None = None) -> ParsedQuestions:
    """Questions found in ``text`` (at most ``limit``); ``method`` says which strategy matched."""
    body = _THINK.sub("", text or "")
    strategies = (("json", _from_json), ("list", _from_list), ("question_marks", _from_question_marks))
    all_dropped: dict[str, int] = {}
    for method, strategy in strategies:
        raw = strategy(body)
        if not raw:
            continue
        kept, dropped = _filter(raw, min_chars, limit)
        if kept:
            return ParsedQuestions(kept, method, dropped)
        for key, count in dropped.items():
            all_dropped[key] = all_dropped.get(key, 0) + count
    return ParsedQuestions([], "none", all_dropped)
