"""When a completion may end before its token budget (a :data:`~cicdllm_assets.llm.base.StopCheck`).

* Every completion stops once it loops: it repeats a passage of its own verbatim
  (:func:`~cicdllm_assets.quality.filters.repeats_itself`; finish reason ``loop``; the quality
  filter rejects the pair as ``repetitive``, as it would the whole loop at the length limit).
* A question completion stops once it holds the questions asked for: ``n`` parsed questions
  on whole lines, so later text (a small model goes on answering its
  own questions) costs no decode steps. The same parser then reads the same questions.
* It also stops once it holds ``n`` items that are not questions, no question, and then opens a
  code block (finish reason ``no_questions``): the model answered instead of asking and went on
  to write code, the reply is a ``parse_error``, and the decode steps to the length limit would
  only delay the retry with the next seed. Without the code block it goes on: a summary or a
  list of cases may precede the questions.
"""

from __future__ import annotations

from cicdllm_assets.generation.parsing import parse_questions
from cicdllm_assets.llm.base import StopCheck
from cicdllm_assets.quality.filters import LOOP_FINISH, repeats_itself

NO_QUESTIONS_FINISH = "no_questions"


def answer_stop(text: str) -> str | None:
    """``loop`` once ``text`` repeats itself, else go on."""
    return LOOP_FINISH if repeats_itself(text) else None


def question_stop(n_questions: int, min_chars: int) -> StopCheck:
    """Stop a question list once ``n_questions`` questions parse from a text ending in a
    newline (the last question's line is complete; checked on the text up to its last newline),
    once it holds ``n_questions`` items that are not questions and no question and then opens a
    code block, or once it loops."""

    def check(text: str) -> str | None:
        lines = text[: text.rfind("\n") + 1]  # whole lines only: the last question is complete
        if n_questions > 0 and lines:
            parsed = parse_questions(lines, min_chars=min_chars, limit=n_questions)
            if len(parsed.questions) >= n_questions:
                return "stop"
            answered = not parsed.questions and parsed.dropped.get("not_a_question", 0) >= n_questions
            if answered and "```" in lines:
                return NO_QUESTIONS_FINISH
        return answer_stop(text)

    return check
