"""Completions end early once they loop or hold the questions asked for, on both backends
(the real mlx-lm path with a tiny model; a loopback OpenAI server streaming a scripted loop)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from benchmarks.fault_server import FaultServer
from cicdllm_assets.generation.parsing import parse_questions
from cicdllm_assets.generation.stopping import NO_QUESTIONS_FINISH, answer_stop, question_stop
from cicdllm_assets.llm.base import STOP_CHECK_TOKENS, ChatMessage, GenerationRequest
from cicdllm_assets.llm.mlx_backend import MLXBackend, release_models
from cicdllm_assets.quality.filters import (
    LOOP_FINISH,
    LOOP_SPAN_CHARS,
    NEAR_LOOP_CHARS,
    NEAR_LOOP_SPAN_CHARS,
    REPETITIVE,
    check_pair,
    repeats_itself,
)
from tests.llm_fixtures import tiny_model_dir
from tests.openai_helpers import make_backend, make_request

__all__ = ["tiny_model_dir"]

LOOP_SENTENCE = "The function returns a list of all the evaluation histories that match the given key. "
LOOPING_ANSWER = "The code reads the plan first. " + LOOP_SENTENCE * 30
# What SmolLM2-135M wrote for a question prompt (from a `make run` ledger): two questions,
# then it went on answering them until the length limit.
RAMBLING_QUESTIONS = (
    "1. How do I call `_open_local` with `path` in `__init__`?\n"
    "2. What would change in `_open_local` to support another kind of `path`?\n\n"
    "Question 1:\n1. How do I call `_open_local` with `path` in `__init__`?\n"
)


def test_a_verbatim_loop_is_seen_once_its_passage_repeats() -> None:
    assert not repeats_itself("The code reads the plan first. " + LOOP_SENTENCE)
    first_stop = next(n for n in range(1, len(LOOPING_ANSWER) + 1) if repeats_itself(LOOPING_ANSWER[:n]))
    # the first moment the last NEAR_LOOP_SPAN_CHARS characters occur just before: inside the
    # second repetition of the sentence, never before a full near span of repeated text
    opening = len("The code reads the plan first. ")
    assert opening + len(LOOP_SENTENCE) + NEAR_LOOP_SPAN_CHARS - len(". ") <= first_stop  # ". " ends both
    assert first_stop <= opening + 2 * len(LOOP_SENTENCE)
    # a varied answer of the same length never counts as a loop
    varied = " ".join(f"Step {i} reads field_{i} and checks it against limit_{i * 7}." for i in range(60))
    assert not any(repeats_itself(varied[:n]) for n in range(1, len(varied) + 1, 7))


# What SmolLM2-135M wrote for an answer in a `make run`: a 66-character sentence over and over.
SHORT_LOOP_SENTENCE = "It uses `Field` to define a class with a specific type of module. "


def test_a_short_sentence_loop_stops_within_its_third_copy() -> None:
    opening = "The code shows that `ExportConfig` holds the export settings. "
    text = opening + SHORT_LOOP_SENTENCE * 6
    first_stop = next(n for n in range(1, len(text) + 1) if repeats_itself(text[:n]))
    # each copy decoded after the stop costs a decode step per token of the whole batch
    assert first_stop <= len(opening) + 3 * len(SHORT_LOOP_SENTENCE)


def test_a_code_line_quoted_twice_apart_is_not_a_loop() -> None:
    line = "backend = MLXBackend(model_path, batch_size=8, temperature=0.3, top_p=0.95, seed=1234, dequantize=True)"
    assert NEAR_LOOP_SPAN_CHARS < len(line) < LOOP_SPAN_CHARS
    between = (
        "Each result carries the request's key, so the caller can match replies to requests even "
        "when they arrive out of order; failed requests carry the reason instead of text, and the "
        "results of one call come back as they finish, not in the order they were sent.\n\n"
    )
    assert len(between) > NEAR_LOOP_CHARS
    in_prose = f"Create the backend with `{line}` and call `generate` with the requests.\n\n{between}"
    in_two_blocks = f"```python\n{line}\n```\n\n{between}For a second model:\n\n```python\n{line}\n```\n"
    for answer in (in_prose + f"```python\n{line}\nresults = list(backend.generate(requests))\n```\n", in_two_blocks):
        assert not any(repeats_itself(answer[:n]) for n in range(1, len(answer) + 1))
    # the same line twice in a row is a loop
    assert repeats_itself(f"```python\n{line}\n{line}\n")


def test_question_stop_ends_on_the_line_after_the_last_question() -> None:
    check = question_stop(2, min_chars=12)
    head = RAMBLING_QUESTIONS.split("\n\n")[0]
    assert check(head) is None  # the second question's line is not known to be complete yet
    assert check(head[: head.index("\n") + 1]) is None  # one question only
    assert check(head + "\n") == "stop"
    assert check(head + "\n\nQuest") == "stop"  # checked on whole lines
    # what the stage then parses from the stopped text is the same two questions
    stopped = parse_questions(head + "\n\nQuest", min_chars=12, limit=2).questions
    assert stopped == parse_questions(RAMBLING_QUESTIONS, min_chars=12, limit=2).questions
    assert question_stop(3, min_chars=12)(head + "\n") is None
    assert check("1. What does it do?\n" + LOOP_SENTENCE * 3) == LOOP_FINISH  # a loop before the 2nd question


# What SmolLM2-135M wrote for a question prompt in a `make run` (all three samples failed):
# two answers in a numbered list, then code until the length limit.
ANSWERED_INSTEAD = (
    "1. Yes, `ChunkSpan` protects itself against a missing `row`.\n"
    "2. You can feed it into `ChunkSpan` by calling `to_list()` on the `ChunkSpan` class.\n\n"
    "Here's an example of how to use `ChunkSpan` to flatten a list of lists:\n\n```python\n"
)


def test_question_stop_ends_a_reply_that_answers_instead_of_asking() -> None:
    check = question_stop(2, min_chars=12)
    first, second = ANSWERED_INSTEAD.split("\n")[:2]
    assert check(first + "\n") is None  # one answer: a question may still follow
    assert check(first + "\n" + second + "\n") is None  # two answers: questions may still follow
    assert check(ANSWERED_INSTEAD[: ANSWERED_INSTEAD.index("```")]) is None
    assert check(ANSWERED_INSTEAD) == NO_QUESTIONS_FINISH  # ... but it went on to write code
    assert parse_questions(ANSWERED_INSTEAD, min_chars=12, limit=2).questions == []  # a parse_error, as at the limit
    # one answer, then a question: the question is kept and the reply goes on
    assert check(first + "\n2. What does `ChunkSpan` do with a missing `row`?\n") is None
    # a summary before the questions is not cut
    summary = first + "\n" + second + "\n\nQuestions:\n1. What does `ChunkSpan` do without a `row`?\n"
    assert check(summary) is None
    assert check(summary + "2. Why does `ChunkSpan` call `to_list()`?\n") == "stop"


def test_a_loop_stopped_early_is_rejected_as_repetitive() -> None:
    row = {"question": "What does `history` return?", "answer": LOOPING_ANSWER[:300], "finish_reason": LOOP_FINISH}
    rejection = check_pair(row, None)
    assert rejection is not None and rejection.reason == REPETITIVE
    assert check_pair({**row, "finish_reason": "stop", "answer": "The code reads the plan first."}, None) is None


def test_mlx_backend_ends_a_request_when_its_stop_check_says_so(tiny_model_dir: Path) -> None:
    release_models()
    backend = MLXBackend(str(tiny_model_dir), batch_size=4)
    seen: list[str] = []

    def stop_at_second_check(text: str) -> str | None:
        seen.append(text)
        return "enough" if len(seen) >= 2 else None

    messages = (ChatMessage("system", "You explain code."), ChatMessage("user", "def f():\n    return 1\n" * 4))
    plain = [
        GenerationRequest(f"plain-{i}", (*messages, ChatMessage("user", f"Question {i}?")), 24, 0.0, 1.0, 3, 2)
        for i in range(3)
    ]
    stopped = dataclasses.replace(plain[0], key="stopped", stop_when=stop_at_second_check)
    results = {r.key: r for r in backend.generate([stopped, *plain[1:]])}
    assert results["stopped"].finish_reason == "enough"
    assert results["stopped"].completion_tokens == 2 * STOP_CHECK_TOKENS
    assert len(seen) == 2 and seen[-1] == results["stopped"].text  # the check saw the decoded text
    for key in ("plain-1", "plain-2"):  # the others run to their own end, the freed slot did not disturb them
        assert results[key].ok and results[key].finish_reason in ("stop", "length")
    alone = {r.key: r for r in backend.generate(plain[1:])}
    assert [alone[k].text for k in ("plain-1", "plain-2")] == [results[k].text for k in ("plain-1", "plain-2")]


def test_openai_backend_closes_a_looping_stream_and_reports_the_loop() -> None:
    with FaultServer(responder=lambda body: LOOPING_ANSWER, latency=3.0, stream_chunks=60) as server:
        backend = make_backend(server.base_url)
        request = dataclasses.replace(make_request("loop", "Explain it."), stop_when=answer_stop, max_tokens=400)
        try:
            (result,) = list(backend.generate([request]))
        finally:
            backend.close()
        (record,) = server.chat_records
        deadline = time.monotonic() + 10.0
        while record.finished_at is None and time.monotonic() < deadline:  # the server notices the close
            time.sleep(0.05)
    assert result.ok and result.finish_reason == LOOP_FINISH
    assert result.text and LOOPING_ANSWER.startswith(result.text.rstrip())
    assert len(result.text) < len(LOOPING_ANSWER) / 3  # stopped long before the end of the reply
    # the client closed the stream: the server stopped writing before the whole reply (3 s of streaming)
    assert record.abandoned or record.client_gone_at is not None
    assert record.finished_at is not None and record.started_at is not None
    assert record.finished_at - record.started_at < 2.5
