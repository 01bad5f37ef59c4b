"""Per-answer quality filters: empty, truncated, refusal, invalid code and ungrounded answers.

Every filter returns a :class:`Rejection` (a stable reason code plus a human detail) or
``None``. Reason codes are what ``qa_pairs.reject_reason`` holds and what the dataset
card counts, so they never change meaning.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cicdllm_assets.quality.grounding import DEFAULT_MIN_GROUNDED_RATIO, FENCE, grounding_score

# Reason codes (stable: stored in tables and counted in the dataset card).
EMPTY_QUESTION = "empty_question"
EMPTY_ANSWER = "empty_answer"
TOO_SHORT = "too_short"
TRUNCATED = "truncated"
REFUSAL = "refusal"
NOT_GROUNDED = "not_grounded"
ECHOES_CHUNK = "echoes_chunk"
TRUNCATED_QUESTION = "truncated_question"
DUPLICATE = "duplicate"
NEAR_DUPLICATE = "near_duplicate"
LICENSE_EXCLUDED = "license_excluded"
REPETITIVE = "repetitive"
CODE_INVALID = "code_invalid"

REASONS: tuple[str, ...] = (
    EMPTY_QUESTION,
    TRUNCATED_QUESTION,
    EMPTY_ANSWER,
    TOO_SHORT,
    TRUNCATED,
    REFUSAL,
    REPETITIVE,
    ECHOES_CHUNK,
    CODE_INVALID,
    NOT_GROUNDED,
    DUPLICATE,
    NEAR_DUPLICATE,
    LICENSE_EXCLUDED,
)
MIN_ANSWER_CHARS = 20
# An answer that only repeats lines of its chunk must add at least this much of its own.
MIN_OWN_CHARS = 40
# Degenerate, looping output: this share of an answer's word 4-grams repeat earlier ones.
REPEAT_NGRAM = 4
MAX_REPEATED_SHARE = 0.4
MIN_WORDS_FOR_REPEAT_CHECK = 24
_WORD = re.compile(r"[A-Za-z0-9_]+")

_REFUSAL_START = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry,|i apologi[sz]e|unfortunately,? i (?:can(?:not|'t)|am unable|'m unable)|"
    r"i (?:cannot|can't|can not|am unable to|'m unable to|am not able to|won't) "
    r"(?:help|assist|answer|provide|comply|do that|fulfil|see|access|determine))",
    re.IGNORECASE,
)
_REFUSAL_ANYWHERE = re.compile(
    r"\bas an ai\b|\bas a(?:n ai)? language model\b|\bi(?:'m| am) (?:just )?an ai\b|"
    r"\bi (?:do not|don't) have (?:access to|enough (?:information|context))\b|"
    r"\bwithout (?:seeing|access to) the (?:actual |full )?code\b|\bi (?:do not|don't) know\b|"
    r"\b(?:cannot|can't|does not|doesn't|do not|don't) (?:fully )?answer (?:this|the|your) question\b|"
    r"\bnot enough (?:information|context) to (?:answer|determine|tell)\b",
    re.IGNORECASE,
)
_DANGLING_TEXT = (
    "a an the and or but to of with for in on at by from as is are was were be that which this "
    "these those its their your our if then than so because into onto via"
)
_DANGLING_WORDS = frozenset(_DANGLING_TEXT.split())
_SENTENCE_END = ".!?:;)]}\"'`*>|"
PYTHON_FENCE_LANGS = frozenset({"python", "py", "python3", "py3", "pycon", "ipython"})
_DOCTEST_PROMPT = re.compile(r"^\s*(?:>>>|\.\.\.)(?: |$)")


@dataclass(frozen=True)
class Rejection:
    """Why a pair was rejected: a stable reason code and a short human detail."""

    reason: str
    detail: str = ""


def _max_tokens(params: Any) -> int | None:
    if not params:
        return None
    try:
        value = json.loads(params).get("max_tokens") if isinstance(params, str) else params.get("max_tokens")
    except (ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int | float) else None


def check_truncated(
    answer: str,
    completion_tokens: int | None = None,
    max_tokens: int | None = None,
    finish_reason: str | None = None,
) -> str | None:
    """A detail string if ``answer`` looks cut off (length limit, open code fence, mid-sentence).

    The backend's recorded ``finish_reason`` decides the length limit when there is one
    (``length``: cut; ``stop``: the model ended it); without it, ``completion_tokens``
    reaching ``max_tokens`` (the effective, context-capped budget the request was sent with).
    """
    if finish_reason == "length":
        return "stopped at the length limit (finish_reason=length)"
    if not finish_reason and completion_tokens is not None and max_tokens and completion_tokens >= max_tokens:
        return f"stopped at the length limit ({completion_tokens} >= {max_tokens} tokens)"
    if answer.count("```") % 2 == 1:
        return "unbalanced code fence"
    text = answer.rstrip()
    if not text:
        return None
    lines = text.splitlines()
    last = lines[-1].strip()
    if text.endswith("```") or last.startswith(("|", "#", "    ")):
        return None
    if last[-1] in _SENTENCE_END:
        return None
    if last[-1] in ",(-\u2013/=+&" or last.endswith(("...", " and", " or")):
        return "ends mid-sentence"
    words = re.findall(r"[A-Za-z']+", last)
    if words and words[-1].lower() in _DANGLING_WORDS:
        return "ends mid-sentence"
    is_list_item = bool(re.match(r"^(?:[-*+]|\d+[.)])\s", last))
    if not is_list_item and len(words) >= 6 and last[-1].isalnum():
        return "ends mid-sentence"
    return None


def check_question(question: str) -> str | None:
    """A detail string if the question is cut off (open backtick, or ends on a dangling word)."""
    text = question.strip()
    if text.count("`") % 2 == 1:
        return "unbalanced backtick"
    if text[-1] in _SENTENCE_END:
        return None
    words = re.findall(r"[A-Za-z']+", text)
    if text[-1] in ",(-/=+&" or (words and words[-1].lower() in _DANGLING_WORDS and text[-1].isalpha()):
        return "question ends mid-sentence"
    return None


def check_echo(answer: str, chunk_text: str) -> str | None:
    """A detail string if the answer mostly repeats its chunk and adds almost nothing."""
    chunk_lines = {line.strip() for line in chunk_text.splitlines() if line.strip()}
    copied = own = 0
    for line in answer.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("```"):
            continue
        if stripped in chunk_lines:
            copied += 1
        else:
            own += len(stripped)
    if copied and own < MIN_OWN_CHARS:
        return f"{copied} line(s) copied from the chunk, only {own} characters of its own"
    return None


LOOP_FINISH = "loop"
"""The finish reason of a completion the backend ended because it repeated itself."""

LOOP_SPAN_CHARS = 160
"""A completion whose last this-many characters already appeared earlier in it is looping."""

NEAR_LOOP_SPAN_CHARS = 80
"""A completion whose last this-many characters have an earlier copy starting in the
:data:`NEAR_LOOP_CHARS` before them is looping too: a sentence loop stops within its third copy (every token decoded
after that is a rejected pair's, and slows the batch), while a line quoted twice a paragraph
apart (in prose, then in a code block after it) needs the full :data:`LOOP_SPAN_CHARS` to count."""

NEAR_LOOP_CHARS = 240
"""How close before the last :data:`NEAR_LOOP_SPAN_CHARS` characters their earlier copy must start."""


def repeats_itself(text: str, span: int = LOOP_SPAN_CHARS) -> bool:
    """True when the last ``span`` characters of ``text`` occur earlier in it, or its last
    :data:`NEAR_LOOP_SPAN_CHARS` have an earlier copy starting in the :data:`NEAR_LOOP_CHARS`
    before them (a verbatim loop: the model copies its own passage; whatever follows only
    repeats it again)."""
    end = len(text) - 1
    near = NEAR_LOOP_SPAN_CHARS
    if len(text) > near and text.find(text[-near:], max(0, len(text) - near - NEAR_LOOP_CHARS), end) != -1:
        return True
    if len(text) < span + 1:
        return False
    return text.find(text[-span:], 0, end) != -1


def check_repetitive(answer: str) -> str | None:
    """A detail string if ``answer`` loops: most of its word 4-grams are repeats of earlier ones."""
    words = [w.lower() for w in _WORD.findall(answer)]
    if len(words) < MIN_WORDS_FOR_REPEAT_CHECK:
        return None
    grams = [tuple(words[i : i + REPEAT_NGRAM]) for i in range(len(words) - REPEAT_NGRAM + 1)]
    repeated = 1 - len(set(grams)) / len(grams)
    if repeated >= MAX_REPEATED_SHARE:
        ((top, count),) = Counter(grams).most_common(1)
        return f"{repeated:.0%} of its word 4-grams are repeats (e.g. {' '.join(top)!r} x{count})"
    return None


def check_refusal(answer: str) -> str | None:
    """A detail string if ``answer`` is a refusal or an 'as an AI' disclaimer."""
    head = answer.lstrip()[:300]
    match = _REFUSAL_START.search(head) or _REFUSAL_ANYWHERE.search(answer)
    return f"refusal phrase {match.group(0).strip()!r}" if match else None


def python_blocks(answer: str, language: str = "") -> list[str]:
    """The answer's fenced code blocks that are Python: tagged ``python``/``py``/..., or untagged
    when the chunk is Python (``language``). Doctest blocks keep only their ``>>>``/``...`` lines."""
    blocks: list[str] = []
    for match in FENCE.finditer(answer):
        tag = match.group(1).strip().split()[0].lower() if match.group(1).strip() else ""
        if tag not in PYTHON_FENCE_LANGS and not (tag == "" and language.lower() == "python"):
            continue
        body = match.group(2)
        lines = body.splitlines()
        if any(_DOCTEST_PROMPT.match(line) for line in lines):
            body = "\n".join(_DOCTEST_PROMPT.sub("", line, count=1) for line in lines if _DOCTEST_PROMPT.match(line))
        blocks.append(body)
    return blocks


def check_code_blocks(answer: str, language: str = "") -> str | None:
    """A detail string if a Python code block of ``answer`` does not parse (``ast``)."""
    for number, block in enumerate(python_blocks(answer, language), start=1):
        if not block.strip():
            continue
        try:
            ast.parse(textwrap.dedent(block))
        except SyntaxError as exc:
            return f"Python code block {number} does not parse: {exc.msg} (line {exc.lineno})"
        except ValueError as exc:  # e.g. null bytes
            return f"Python code block {number} does not parse: {exc}"
    return None


def check_pair(
    row: Mapping[str, Any],
    chunk_text: str | None,
    imports: str = "",
    min_grounded_ratio: float = DEFAULT_MIN_GROUNDED_RATIO,
    repo_symbols: frozenset[str] = frozenset(),
) -> Rejection | None:
    """Run every per-pair filter on one answers row; the first failing one wins.

    ``repo_symbols`` are the names the whole repository defines (see
    :func:`~cicdllm_assets.quality.grounding.repo_symbol_index`): they count as grounded too.
    """
    question = str(row.get("question") or "").strip()
    answer = str(row.get("answer") or "").strip()
    if not question:
        return Rejection(EMPTY_QUESTION, "question is empty")
    question_problem = check_question(question)
    if question_problem:
        return Rejection(TRUNCATED_QUESTION, question_problem)
    if not answer:
        return Rejection(EMPTY_ANSWER, "answer is empty")
    if len(answer) < MIN_ANSWER_CHARS:
        return Rejection(TOO_SHORT, f"answer has {len(answer)} characters (< {MIN_ANSWER_CHARS})")
    refusal = check_refusal(answer)
    if refusal:
        return Rejection(REFUSAL, refusal)
    if row.get("finish_reason") == LOOP_FINISH:
        return Rejection(REPETITIVE, "generation stopped in a loop (it repeated a passage of its own verbatim)")
    completion_tokens = row.get("completion_tokens")
    effective = row.get("max_tokens")  # the budget actually sent (capped to fit the context window)
    truncated = check_truncated(
        answer,
        int(completion_tokens) if completion_tokens is not None else None,
        int(effective) if effective else _max_tokens(row.get("params")),
        str(row.get("finish_reason") or "") or None,
    )
    if truncated:
        return Rejection(TRUNCATED, truncated)
    repetitive = check_repetitive(answer)
    if repetitive:
        return Rejection(REPETITIVE, repetitive)
    code_problem = check_code_blocks(answer, str(row.get("language") or ""))
    if code_problem:
        return Rejection(CODE_INVALID, code_problem)
    if chunk_text is not None:
        echo = check_echo(answer, chunk_text)
        if echo:
            return Rejection(ECHOES_CHUNK, echo)
        score = grounding_score(
            answer,
            chunk_text,
            imports=imports,
            question=question,
            path=str(row.get("path") or ""),
            repo_symbols=repo_symbols,
        )
        if score.checked and score.ratio < min_grounded_ratio:
            missing = ", ".join(score.missing[:5])
            return Rejection(
                NOT_GROUNDED,
                f"{score.found}/{score.checked} code identifiers found in the chunk or the repository "
                f"(< {min_grounded_ratio:.0%}); missing: {missing}",
            )
    return None
