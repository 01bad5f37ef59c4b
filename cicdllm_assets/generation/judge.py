"""The LLM judge: scores each accepted pair 1-5 for correctness, groundedness and usefulness.

Judging runs through the generation engine (:class:`~cicdllm_assets.generation.engine.StageRunner`):
one ledger item (kind ``judge``) per pair, keyed by the pair's content (chunk key, question,
answer), the judge prompt's hash, the judge model and its params, so a re-run judges only
new pairs and a killed run resumes. A verdict is parsed from messy replies (prose around
it, code fences, JSON or ``Correctness: 4`` lines); a reply without three whole scores in
1-5 and a rationale is a ``parse_error`` that uses one of ``max_attempts``.

The threshold then filters: a pair whose lowest score is under ``quality.judge.threshold``
is rejected as ``judge_low``; one the judge could not score as ``judge_unscored`` (unless
``keep_unscored``). Scores and the rationale become columns of qa_pairs and the export.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from cicdllm_assets.config.models import GenerationConfig, JudgeConfig, LLMConfig
from cicdllm_assets.errors import CicdllmError
from cicdllm_assets.generation.chunks import Chunk
from cicdllm_assets.generation.context import MessageBuilder
from cicdllm_assets.generation.engine import WorkItem
from cicdllm_assets.generation.ledger import LedgerEntry, LedgerItem, Outcome, item_key, params_json
from cicdllm_assets.llm.base import ChatMessage, GenerationResult
from cicdllm_assets.quality.secrets import redact_field
from cicdllm_assets.storage.contract import JUDGE_FIELDS

CRITERIA: tuple[str, ...] = ("correctness", "groundedness", "usefulness")
JUDGE_LOW = "judge_low"
JUDGE_UNSCORED = "judge_unscored"
JUDGE_SEED = 0
RATIONALE_MAX_CHARS = 300

JUDGE_SYSTEM = (
    "You are a strict reviewer of question and answer pairs about source code. You check every claim "
    "of an answer against the code shown and never reward invented behaviour."
)
JUDGE_INSTRUCTION = (
    "Score the answer from 1 (bad) to 5 (excellent) on three criteria:\n"
    "- Correctness: is every statement true of the code above?\n"
    "- Groundedness: does it only use names and behaviour that the code shows?\n"
    "- Usefulness: would it help a developer working with this code?\n\n"
    "Reply with exactly these four lines and nothing else:\n"
    "Correctness: <1-5>\nGroundedness: <1-5>\nUsefulness: <1-5>\nRationale: <one sentence>"
)
JUDGE_PROMPT_HASH = hashlib.sha256(
    json.dumps([JUDGE_SYSTEM, "context-v1", JUDGE_INSTRUCTION]).encode("utf-8")
).hexdigest()[:16]
"""Part of every judge item's key: editing the prompt re-judges every pair."""

JUDGE_COLUMNS: tuple[str, ...] = tuple(f.name for f in JUDGE_FIELDS)
SCORE_COLUMNS: tuple[str, ...] = tuple(f"judge_{c}" for c in CRITERIA)


class JudgeParseError(CicdllmError, ValueError):
    """A judge reply without a usable verdict; the message says what is missing or wrong."""


@dataclass(frozen=True)
class Verdict:
    """Three scores in 1-5 and a one-line rationale."""

    correctness: int
    groundedness: int
    usefulness: int
    rationale: str

    @property
    def scores(self) -> dict[str, int]:
        """``{criterion: score}``."""
        return {c: int(getattr(self, c)) for c in CRITERIA}

    @property
    def lowest(self) -> tuple[str, int]:
        """The lowest-scored criterion and its score (first in :data:`CRITERIA` order on ties)."""
        return min(self.scores.items(), key=lambda item: item[1])

    def as_parsed(self) -> list[str]:
        """What the ledger stores in ``parsed_json``."""
        return [*(str(v) for v in self.scores.values()), self.rationale]

    @classmethod
    def from_parsed(cls, parsed: Sequence[str]) -> Verdict:
        """Inverse of :meth:`as_parsed`."""
        if len(parsed) != 4:
            raise JudgeParseError(f"a stored verdict has {len(parsed)} fields, expected 4")
        return cls(int(parsed[0]), int(parsed[1]), int(parsed[2]), str(parsed[3]))


# ---------------------------------------------------------------------------- parsing

_NAMES: dict[str, str] = {
    "correctness": r"correctness|correct|accuracy",
    "groundedness": r"groundedness|grounded|grounding",
    "usefulness": r"usefulness|useful|helpfulness",
}
_RATIONALE_NAMES = r"rationale|reason|reasoning|explanation|justification"
_NUMBER = r"(?P<value>[-+]?\d+(?:\.\d+)?)(?:\s*(?:/|out\s+of)\s*(?P<scale>\d+))?"
_LINE_SCORES = {
    name: re.compile(
        rf"^[\s>*#\-\d.)_]*?\**_*\s*(?:{names})\s*\**_*\s*(?:\([^)\n]*\))?\s*\**\s*[:=\-\u2013]\s*[*_\"'\[]*\s*{_NUMBER}",
        re.IGNORECASE | re.MULTILINE,
    )
    for name, names in _NAMES.items()
}
_LINE_RATIONALE = re.compile(
    rf"^[\s>*#\-\d.)_]*?\**_*\s*(?:{_RATIONALE_NAMES})\s*\**_*\s*[:=\-\u2013]\s*\**_*\s*(?P<text>.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_FENCE = re.compile(r"^\s*(```|~~~)")
_KEY_ALIASES: dict[str, str] = {
    **{alias: name for name, names in _NAMES.items() for alias in names.split("|")},
    **dict.fromkeys(_RATIONALE_NAMES.split("|"), "rationale"),
}


def _score(criterion: str, value: Any, scale: Any = None) -> int:
    """A whole score in 1-5 from a JSON value or matched text; :class:`JudgeParseError` otherwise."""
    text = str(value).strip()
    match = re.fullmatch(_NUMBER, text) if not isinstance(value, int | float) else None
    if match is not None:
        text, scale = match.group("value"), match.group("scale") or scale
    if isinstance(value, bool):
        raise JudgeParseError(f"{criterion} score {value!r} is not a number")
    try:
        number = float(text)
    except ValueError:
        raise JudgeParseError(f"{criterion} score {value!r} is not a number") from None
    if scale is not None and int(scale) != 5:
        raise JudgeParseError(f"{criterion} score {text}/{scale} is not on the 1-5 scale")
    if not number.is_integer():
        raise JudgeParseError(f"{criterion} score {text} is not a whole number")
    if not 1 <= number <= 5:
        raise JudgeParseError(f"{criterion} score {int(number)} is outside 1-5")
    return int(number)


def _one_line(text: str) -> str:
    line = " ".join(text.split()).strip(" *_\"'`")
    return line if len(line) <= RATIONALE_MAX_CHARS else line[: RATIONALE_MAX_CHARS - 1] + "…"


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object embedded in ``text`` (in fences or prose), outermost first."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    index = text.find("{")
    while index != -1:
        try:
            value, end = decoder.raw_decode(text, index)
        except ValueError:
            index = text.find("{", index + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        index = text.find("{", end)
    return found


def _from_json(obj: Mapping[str, Any]) -> Verdict:
    fields: dict[str, Any] = {}
    for key, value in obj.items():
        name = _KEY_ALIASES.get(str(key).strip().lower())
        if name is not None and name not in fields:
            fields[name] = value
    missing = [c for c in CRITERIA if c not in fields]
    if missing:
        raise JudgeParseError(f"the JSON verdict has no {', '.join(missing)} score")
    rationale = _one_line(str(fields.get("rationale") or ""))
    if not re.search(r"[^\W\d_]", rationale):
        raise JudgeParseError("the JSON verdict has no rationale")
    correctness, groundedness, usefulness = (_score(c, fields[c]) for c in CRITERIA)
    return Verdict(correctness, groundedness, usefulness, rationale)


def _from_lines(text: str) -> Verdict:
    scores: dict[str, int] = {}
    spans: list[tuple[int, int]] = []
    for criterion, pattern in _LINE_SCORES.items():
        match = pattern.search(text)
        if match is None:
            continue
        scores[criterion] = _score(criterion, match.group("value"), match.group("scale"))
        spans.append((text.rfind("\n", 0, match.start()) + 1, match.end()))
    missing = [c for c in CRITERIA if c not in scores]
    if len(missing) == len(CRITERIA):
        raise JudgeParseError("no scores found (expected 'Correctness: <1-5>' lines or a JSON object)")
    if missing:
        raise JudgeParseError(f"no {', '.join(missing)} score found")
    rationale = ""
    match = _LINE_RATIONALE.search(text)
    if match is not None:
        rationale = _one_line(match.group("text"))
        if not rationale:  # "Rationale:" then the sentence on the next line
            rest = [line for line in text[match.end() :].splitlines() if line.strip()]
            rationale = _one_line(rest[0]) if rest else ""
    if not rationale:  # no label: the first prose line that is not a score line or a fence
        for line in text.splitlines():
            start = text.find(line)
            if not line.strip() or _FENCE.match(line) or any(a <= start < b for a, b in spans):
                continue
            if not any(p.match(line) for p in _LINE_SCORES.values()):
                rationale = _one_line(line)
                break
    if not re.search(r"[^\W\d_]", rationale):  # a number or punctuation is no rationale
        raise JudgeParseError("no rationale found")
    return Verdict(scores["correctness"], scores["groundedness"], scores["usefulness"], rationale)


def parse_verdict(text: str) -> Verdict:
    """The verdict in a judge reply: a JSON object with the three scores (anywhere, fenced or
    not) if there is one, else ``Correctness: 4``-style lines (markdown bold, ``4/5`` and list
    markers allowed). Raises :class:`JudgeParseError` naming what is missing or out of range."""
    if not text.strip():
        raise JudgeParseError("empty reply")
    for obj in _json_objects(text):
        if any(_KEY_ALIASES.get(str(k).strip().lower()) in CRITERIA for k in obj):
            return _from_json(obj)
    return _from_lines(text)


# ---------------------------------------------------------------------------- planning


def judge_messages(chunk: Chunk, question: str, answer: str, code: str | None = None) -> tuple[ChatMessage, ...]:
    """System, the code (the shared prefix), then the pair and the scoring instruction."""
    values = chunk.placeholder_values(code)
    language = values["language"]
    context = (
        f"Repository: {values['repo']}\nFile: {values['path']} ({language})\n\n```{language}\n{values['code']}\n```"
    )
    return (
        ChatMessage("system", JUDGE_SYSTEM),
        ChatMessage("user", context),
        ChatMessage("user", f"Question: {question.strip()}\n\nAnswer:\n{answer.strip()}\n\n{JUDGE_INSTRUCTION}"),
    )


def judge_params(cfg: JudgeConfig) -> dict[str, Any]:
    """Params that shape a verdict (part of its key)."""
    return {"max_tokens": cfg.max_tokens, "temperature": cfg.temperature, "top_p": 1.0, "seed": JUDGE_SEED}


def judge_sampling(cfg: JudgeConfig, generation: GenerationConfig) -> GenerationConfig:
    """The generation section as the engine should see it for judging: the judge's sampling and
    attempts, the generation batch size."""
    return generation.model_copy(
        update={"temperature": cfg.temperature, "top_p": 1.0, "seed": JUDGE_SEED, "max_attempts": cfg.max_attempts}
    )


def judge_llm(cfg: JudgeConfig, llm: LLMConfig) -> LLMConfig:
    """The ``llm`` section of the judge's own backend (``backend: same`` keeps ``llm``)."""
    if cfg.llm.backend == "same":
        return llm
    return LLMConfig.model_validate(cfg.llm.model_dump())


@dataclass(frozen=True)
class JudgeWork:
    """A judge item with the qa_pairs row (by index) it scores."""

    work: WorkItem
    row: int


def plan_judgements(
    rows: Sequence[Mapping[str, Any]],
    chunks_by_key: Mapping[str, Chunk],
    model_id: str,
    cfg: JudgeConfig,
    repo: str,
) -> list[JudgeWork]:
    """One judge item per accepted row whose chunk is known (rows are qa_pairs rows)."""
    params = judge_params(cfg)
    pjson = params_json(params)
    work: list[JudgeWork] = []
    for index, row in enumerate(rows):
        if not row.get("accepted"):
            continue
        chunk = chunks_by_key.get(str(row.get("chunk_key")))
        if chunk is None:
            continue
        question, answer = str(row.get("question") or ""), str(row.get("answer") or "")
        pair = json.dumps([question, answer], ensure_ascii=False)
        key = item_key("judge", chunk.chunk_key, str(row.get("theme") or ""), JUDGE_PROMPT_HASH, model_id, params, pair)
        item = LedgerItem(
            key, "judge", repo, chunk.chunk_key, str(row.get("theme") or ""), JUDGE_PROMPT_HASH, model_id, pjson,
            str(row.get("answer_id") or ""),
        )  # fmt: skip
        build = _builder(chunk, question, answer)
        work.append(JudgeWork(WorkItem(item=item, chunk=chunk, build=build, desired_max_tokens=cfg.max_tokens), index))
    return work


def _builder(chunk: Chunk, question: str, answer: str) -> MessageBuilder:
    return lambda code: judge_messages(chunk, question, answer, code)


def judge_postprocess(w: WorkItem, result: GenerationResult) -> Outcome:
    """ok with the parsed verdict, or a ``parse_error`` saying why the reply is unusable."""
    text = redact_field(result.text) or ""
    try:
        verdict = parse_verdict(text)
    except JudgeParseError as exc:
        return Outcome("failed", output=text, error_category="parse_error", error_message=f"judge verdict: {exc}")
    return Outcome("ok", output=text, parsed=verdict.as_parsed())


# ---------------------------------------------------------------------------- applying


@dataclass
class JudgeSummary:
    """What judging did to one qa_pairs table."""

    judged: int = 0
    unscored: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    histogram: dict[str, list[int]] = field(default_factory=lambda: {c: [0] * 5 for c in CRITERIA})

    def mean(self, criterion: str) -> float:
        """Mean score of one criterion over the judged pairs (0 when none)."""
        return mean_score(self.histogram[criterion])


def mean_score(counts: Sequence[int]) -> float:
    """The mean of a 1-5 score histogram (``counts[i]`` pairs scored ``i + 1``); 0 when empty."""
    total = sum(counts)
    return sum((i + 1) * n for i, n in enumerate(counts)) / total if total else 0.0


def with_judge_columns(table: pa.Table, values: Mapping[str, Sequence[Any]] | None = None) -> pa.Table:
    """``table`` with the judge columns (replaced if present; all null without ``values``)."""
    for name in JUDGE_COLUMNS:
        if name in table.column_names:
            table = table.drop_columns([name])
    for f in JUDGE_FIELDS:
        column = values[f.name] if values is not None else [None] * table.num_rows
        table = table.append_column(f, pa.array(column, f.type))
    return table


def apply_judgements(
    table: pa.Table, work: Sequence[JudgeWork], entries: Mapping[str, LedgerEntry], cfg: JudgeConfig
) -> tuple[pa.Table, JudgeSummary]:
    """Add the judge columns to a qa_pairs table and reject low-scored (and unscored) pairs."""
    n = table.num_rows
    columns: dict[str, list[Any]] = {name: [None] * n for name in JUDGE_COLUMNS}
    accepted = table.column("accepted").to_pylist()
    reasons = table.column("reject_reason").to_pylist()
    details = table.column("reject_detail").to_pylist()
    summary = JudgeSummary()
    rejected: dict[str, int] = {}
    judged_rows = {jw.row: jw for jw in work}
    for row in range(n):
        if not accepted[row]:
            continue
        jw = judged_rows.get(row)
        entry = entries.get(jw.work.item.key) if jw is not None else None
        if entry is None or not entry.ok:
            summary.unscored += 1
            if cfg.keep_unscored:
                continue
            why = "its chunk is not in code_chunks" if jw is None else "not judged yet"
            if entry is not None:
                why = f"{entry.error_category} after {entry.attempts} attempt(s): {entry.error_message or ''}"
            accepted[row], reasons[row], details[row] = False, JUDGE_UNSCORED, f"the judge gave no verdict ({why})"
            rejected[JUDGE_UNSCORED] = rejected.get(JUDGE_UNSCORED, 0) + 1
            continue
        verdict = Verdict.from_parsed(entry.parsed())
        summary.judged += 1
        for criterion, score in verdict.scores.items():
            columns[f"judge_{criterion}"][row] = score
            summary.histogram[criterion][score - 1] += 1
        columns["judge_rationale"][row] = verdict.rationale
        columns["judge_model"][row] = entry.model_id
        name, score = verdict.lowest
        if score < cfg.threshold:
            accepted[row], reasons[row] = False, JUDGE_LOW
            details[row] = f"{name} {score} < threshold {cfg.threshold}: {verdict.rationale}"
            rejected[JUDGE_LOW] = rejected.get(JUDGE_LOW, 0) + 1
    table = table.set_column(table.schema.get_field_index("accepted"), table.schema.field("accepted"), [accepted])
    for name, values in (("reject_reason", reasons), ("reject_detail", details)):
        index = table.schema.get_field_index(name)
        table = table.set_column(index, table.schema.field(name), pa.array(values, pa.string()))
    summary.rejections = dict(sorted(rejected.items()))
    return with_judge_columns(table, columns), summary


def histogram_markdown(histogram: Mapping[str, Sequence[int]]) -> str:
    """Scores 1-5 per criterion as a Markdown table."""
    lines = ["| score | " + " | ".join(CRITERIA) + " |", "|---|" + "---|" * len(CRITERIA)]
    for score in range(1, 6):
        lines.append(f"| {score} | " + " | ".join(str(histogram[c][score - 1]) for c in CRITERIA) + " |")
    return "\n".join(lines)
