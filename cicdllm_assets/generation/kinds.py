"""Question kinds: what each question asks, planned per chunk so one chunk's questions differ.

Six kinds (:data:`QUESTION_KINDS`): how to use the code, why it is designed so, what happens
on bad input (which errors it raises), how to extend or change it, how to test it, and how
it relates to its callers and callees. :func:`plan_kinds` assigns kinds to a chunk's question
slots (theme x question index) deterministically from the chunk's code: each theme first gets
its natural kind (``testing`` -> ``testing``, ...), the other slots follow a permutation
seeded by the chunk's code; no kind repeats within a chunk until all six are used, and never
within one theme's questions (up to six per theme). The
question prompt names the kinds of its slots (``{kinds}``); each question row records its kind.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence

QUESTION_KINDS: dict[str, str] = {
    "usage": "how to use it: a concrete call with real arguments and what it returns",
    "design": "why it is designed this way rather than another way",
    "errors": "what happens on bad, empty or boundary input, and which errors it raises",
    "extend": "how to extend or change it safely (a new option, case or subclass)",
    "testing": "how to test it: which behaviour to check and with which inputs",
    "relations": "how it relates to its callers and the functions or classes it calls",
}
THEME_KINDS: dict[str, str] = {
    "usage_examples": "usage",
    "design_rationale": "design",
    "debugging": "errors",
    "testing": "testing",
    "code_explanation": "relations",
}
KINDS_VERSION = hashlib.sha256(json.dumps(QUESTION_KINDS, sort_keys=True).encode("utf-8")).hexdigest()[:12]
"""Part of question item keys: editing a kind's wording regenerates the questions."""


def plan_kinds(seed: str, themes: Sequence[str], n_questions: int) -> dict[str, tuple[str, ...]]:
    """``{theme: kinds of its n_questions slots}`` for one chunk, ``seed`` its code (deterministic;
    see module doc)."""
    names = list(QUESTION_KINDS)
    order = random.Random(int(hashlib.sha256(seed.encode("utf-8")).hexdigest()[:16], 16))  # noqa: S311
    order.shuffle(names)
    used: list[str] = []
    plan: dict[str, list[str]] = {theme: [] for theme in themes}

    def take(theme: str, preferred: str | None = None) -> str:
        cycle = used[len(used) - len(used) % len(names) :]  # kinds used since all six were last used
        mine = plan[theme]
        for candidates in (
            [k for k in names if k not in cycle and k not in mine],
            [k for k in names if k not in mine],
            names,
        ):
            if candidates:
                kind = preferred if preferred in candidates else candidates[0]
                break
        used.append(kind)
        mine.append(kind)
        return kind

    for theme in themes:  # natural kinds first, in theme order
        if n_questions:
            take(theme, THEME_KINDS.get(theme))
    for _ in range(1, n_questions):
        for theme in themes:
            take(theme)
    return {theme: tuple(kinds) for theme, kinds in plan.items()}


def kinds_text(kinds: Sequence[str]) -> str:
    """The ``{kinds}`` placeholder: one lettered line per question slot ("(a) how to use it ...")."""
    return "\n".join(f"({chr(ord('a') + i)}) {QUESTION_KINDS[kind]}" for i, kind in enumerate(kinds))
