"""Question kinds: what each question asks, planned per chunk so one chunk's questions differ.

Six kinds (:data:`QUESTION_KINDS`): how to use the code, why it is designed so, what happens
on bad input (which errors it raises), how to extend or change it, how to test it, and how
it relates to its callers and callees. :func:`plan_kinds` assigns kinds to a chunk's question
slots (theme x question index) deterministically from the chunk's code: the slots follow a
permutation of the six kinds seeded by the chunk's code, so every kind is equally likely in
every slot and a dataset's questions spread over all six (a theme's "natural" kind first made
two kinds half of a two-theme dataset); no kind repeats within a chunk until all six are used,
and never within one theme's questions (up to six per theme).

The question prompt shows one *example question* per slot (``{examples}``, :func:`examples_text`),
phrased for the chunk with its real names (its symbol, a parameter, a name it calls, an exception
it raises): a labelled list of kinds made SmolLM2-135M echo the list instead of writing
questions; example questions in the numbered form it answers in are followed. Each question row
records its slot's kind.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence

QUESTION_KINDS: dict[str, str] = {
    "usage": "how to use it: a concrete call with real arguments and what it returns",
    "design": "why it is designed this way rather than another way",
    "errors": "what happens on bad, empty or boundary input, and which errors it raises",
    "extend": "how to extend or change it safely (a new option, case or subclass)",
    "testing": "how to test it: which behaviour to check and with which inputs",
    "relations": "how it relates to its callers and the functions or classes it calls",
}
EXAMPLES: dict[str, tuple[str, ...]] = {
    "usage": (
        "How do I call `{s}` with `{p}`, and what does it return?",
        "What does `{s}` return for a given `{p}`?",
        "Which value should I pass as `{p}` to `{s}`?",
        "Can you show a typical call of `{s}`?",
        "How is `{s}` used together with `{c}`?",
        "Suppose I already have a `{p}`: what is the shortest working call to `{s}`?",
        "In what order should a caller set up `{p}` before invoking `{s}`?",
        "What would a caller print after passing an ordinary `{p}` into `{s}`?",
        "Show me `{s}` in action: which `{p}` makes a meaningful example?",
        "From a script, how is `{s}` invoked, and what comes back?",
        "Given the output of `{c}`, how do I feed it into `{s}`?",
        "Walk me through one realistic invocation of `{s}` passing `{p}`.",
    ),
    "design": (
        "Why does `{s}` rely on `{c}`?",
        "Why does `{s}` take `{p}` as a parameter?",
        "Why is `{s}` written this way rather than another way?",
        "What trade-off does `{s}` make?",
        "Could `{s}` work without `{c}`, and what would be lost?",
        "What problem made the author give `{s}` its own `{p}` argument?",
        "Is there a simpler design for `{s}`, and why was it not chosen?",
        "Which constraint explains the shape of `{s}`?",
        "Why not inline `{c}` inside `{s}`?",
        "What alternative to `{p}` did `{s}` avoid, and at what cost?",
        "Which design goal does splitting out `{s}` serve?",
        "How would `{s}` look if performance mattered more than clarity?",
    ),
    "errors": (
        "When does `{s}` raise `{e}`?",
        "What happens when `{p}` is empty or invalid in `{s}`?",
        "What goes wrong in `{s}` if `{c}` fails?",
        "Which inputs make `{s}` fail?",
        "If a caller hands `{s}` a `{p}` of the wrong type, what error comes back?",
        "How should callers of `{s}` handle `{e}`?",
        "Does `{s}` protect itself against a missing `{p}`?",
        "Where could an exception escape from `{s}` when `{c}` misbehaves?",
        "Can `{s}` leave things half-done when `{c}` throws midway?",
        "Under which conditions is `{e}` propagated out of `{s}`?",
        "Is a `None` or zero `{p}` rejected by `{s}`, or silently accepted?",
        "Which failure of `{c}` would surprise a user of `{s}` most?",
    ),
    "extend": (
        "How would I add a new option to `{s}`?",
        "What would change in `{s}` to support another kind of `{p}`?",
        "Where would a new case go in `{s}`?",
        "Which lines of `{s}` must change to swap `{c}` for an alternative?",
        "How can a subclass or wrapper adjust `{s}` without editing it?",
        "If `{p}` grew a new field, what else in `{s}` needs updating?",
        "What is the safest way to refactor `{s}` into smaller pieces?",
        "Could `{s}` accept a callback instead of calling `{c}` directly?",
        "To make `{s}` configurable, which parameter besides `{p}` would you introduce?",
        "Could `{s}` grow a plug-in hook around its use of `{c}`?",
        "Where in `{s}` should logging or metrics be added?",
        "Supporting a second backend for `{c}`: which parts of `{s}` change?",
    ),
    "testing": (
        "How would a test check `{s}` with a different `{p}`?",
        "How can a test replace `{c}` when checking `{s}`?",
        "Which cases should a test of `{s}` cover?",
        "What fixture does a unit test of `{s}` need for `{p}`?",
        "Which assertion proves `{s}` handled an edge-case `{p}` correctly?",
        "How can a test provoke `{e}` from `{s}`?",
        "What makes `{s}` hard to test, and how can a fake `{c}` help?",
        "Which single test would catch a regression in `{s}` quickest?",
        "Which mock stands in for `{c}` in an isolated test of `{s}`?",
        "Sketch a pytest case feeding `{s}` an unusual `{p}`.",
        "What should a regression test assert after `{s}` returns?",
        "Does `{s}` need a temporary directory or database to be tested?",
    ),
    "relations": (
        "What does `{c}` do for `{s}`?",
        "How does `{s}` use the result of `{c}`?",
        "Which functions does `{s}` call, and why?",
        "Who would call `{s}`, and what do they get back?",
        "Where does the `{p}` that reaches `{s}` usually come from?",
        "What breaks downstream of `{s}` if `{c}` changes its output?",
        "Is `{s}` a thin layer over `{c}` or does it add logic of its own?",
        "In which step of the surrounding module does `{s}` run?",
        "Which module calls `{s}`, and with what `{p}`?",
        "Does `{s}` depend on `{c}` directly, or through another layer?",
        "After `{s}` finishes, which component consumes its result?",
        "Is `{c}` the only collaborator of `{s}`?",
    ),
}
"""Example questions per kind; ``{s}`` is the chunk's symbol, ``{p}`` a parameter, ``{c}`` a name
it calls, ``{e}`` an exception it raises (an example needing a name the chunk lacks is skipped)."""
PLAN_RULE = "seeded permutation, no natural kind"
"""How :func:`plan_kinds` assigns kinds (part of :data:`KINDS_VERSION`: a new rule re-plans)."""
KINDS_VERSION = hashlib.sha256(
    json.dumps([QUESTION_KINDS, EXAMPLES, PLAN_RULE], sort_keys=True).encode("utf-8")
).hexdigest()[:12]
"""Part of question item keys: editing a kind's wording, its examples or the plan rule
regenerates the questions."""
_SLOT = re.compile(r"\{([spce])\}")


def plan_kinds(seed: str, themes: Sequence[str], n_questions: int) -> dict[str, tuple[str, ...]]:
    """``{theme: kinds of its n_questions slots}`` for one chunk, ``seed`` its code (deterministic;
    see module doc)."""
    names = list(QUESTION_KINDS)
    order = random.Random(int(hashlib.sha256(seed.encode("utf-8")).hexdigest()[:16], 16))  # noqa: S311
    order.shuffle(names)
    used: list[str] = []
    plan: dict[str, list[str]] = {theme: [] for theme in themes}

    def take(theme: str) -> str:
        cycle = used[len(used) - len(used) % len(names) :]  # kinds used since all six were last used
        mine = plan[theme]
        for candidates in (
            [k for k in names if k not in cycle and k not in mine],
            [k for k in names if k not in mine],
            names,
        ):
            if candidates:
                kind = candidates[0]
                break
        used.append(kind)
        mine.append(kind)
        return kind

    for _ in range(n_questions):
        for theme in themes:
            take(theme)
    return {theme: tuple(kinds) for theme, kinds in plan.items()}


def example_question(kind: str, seed: str, names: Mapping[str, Sequence[str]]) -> str:
    """One example question of ``kind``: among the phrasings whose slots the chunk can fill, one
    naming more than the symbol when the chunk allows it, chosen and filled deterministically from ``seed``;
    ``names``: ``s``/``p``/``c``/``e`` -> candidates."""
    digest = int(hashlib.sha256(f"{kind}\x1f{seed}".encode()).hexdigest()[:12], 16)
    usable = [t for t in EXAMPLES[kind] if all(names.get(slot) for slot in _SLOT.findall(t))]
    # a phrasing naming more than the symbol when the chunk has such names (specific, and varied)
    specific = [t for t in usable if set(_SLOT.findall(t)) - {"s"}]
    usable = specific or usable
    template = usable[digest % len(usable)]

    def fill(match: re.Match[str]) -> str:
        options = names[match.group(1)]
        return options[(digest >> 8) % len(options)]

    return _SLOT.sub(fill, template)


def examples_text(kinds: Sequence[str], seed: str, names: Mapping[str, Sequence[str]]) -> str:
    """The ``{examples}`` placeholder: one numbered example question per planned kind."""
    lines = [example_question(kind, f"{seed}\x1f{i}", names) for i, kind in enumerate(kinds, 1)]
    return "\n".join(f"{i}. {line}" for i, line in enumerate(lines, 1))
