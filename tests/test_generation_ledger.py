"""Ledger rows and the stage runner's bookkeeping (a scripted in-process backend), on SQLite and on Postgres."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cicdllm_assets.config import Settings
from cicdllm_assets.generation.answers_stage import AnswerPlanner, answer_postprocess
from cicdllm_assets.generation.chunks import select_chunks
from cicdllm_assets.generation.engine import FollowOn, StageRunner
from cicdllm_assets.generation.ledger import LEDGER_VERSION, Ledger, LedgerItem, Outcome, is_outage, item_key
from cicdllm_assets.generation.prompts import PromptManager
from cicdllm_assets.generation.questions_stage import (
    final_questions,
    plan_questions,
    question_postprocess,
    questions_table,
)
from cicdllm_assets.llm.base import CircuitOpenError, GenerationRequest, GenerationResult, RequestFeed
from cicdllm_assets.storage.state import StateSchemaError, StateStore, pg_ddl
from tests.generation_support import PROMPTS_SRC, SAMPLE_FILES, ScriptedBackend, chunk_rows

pytestmark = pytest.mark.usefixtures("state_target")  # every test on both backends


def _item(key: str = "k1") -> LedgerItem:
    return LedgerItem(key, "question", "repo", "chunk", "testing", "tpl", "model", "{}")


def test_item_key_is_content_only() -> None:
    base = item_key("answer", "c", "t", "h", "m", {"seed": 0, "temperature": 0.7}, "Why?")
    assert base == item_key("answer", "c", "t", "h", "m", {"temperature": 0.7, "seed": 0}, "Why?")
    variants = [
        item_key("question", "c", "t", "h", "m", {"seed": 0, "temperature": 0.7}, "Why?"),
        item_key("answer", "c2", "t", "h", "m", {"seed": 0, "temperature": 0.7}, "Why?"),
        item_key("answer", "c", "t2", "h", "m", {"seed": 0, "temperature": 0.7}, "Why?"),
        item_key("answer", "c", "t", "h2", "m", {"seed": 0, "temperature": 0.7}, "Why?"),
        item_key("answer", "c", "t", "h", "m2", {"seed": 0, "temperature": 0.7}, "Why?"),
        item_key("answer", "c", "t", "h", "m", {"seed": 1, "temperature": 0.7}, "Why?"),
        item_key("answer", "c", "t", "h", "m", {"seed": 0, "temperature": 0.7}, "How?"),
    ]
    assert base not in variants and len(set(variants)) == len(variants)


def test_outages_use_no_attempt_and_reset_failed_gives_attempts_back(state_target: str | Path) -> None:
    state = StateStore(state_target)
    ledger = Ledger(state)
    for status_code in (503, 429):
        ledger.record(_item("k1"), Outcome("failed", error_category="http_status", uses_attempt=False))
        assert is_outage("http_status", status_code)
    assert not is_outage("http_status", 400) and not is_outage("parse_error") and is_outage("connection")
    entry = ledger.get("k1")
    assert entry is not None and entry.attempts == 0 and entry.needs_attempt(1)
    # A ledger written before outages stopped counting: an exhausted connection failure is pending again.
    with state.transaction() as con:
        con.execute("UPDATE generation_ledger SET attempts = 3, error_category = 'connection'")
    assert ledger.get("k1").needs_attempt(3)  # type: ignore[union-attr]
    ledger.record(_item("k2"), Outcome("failed", error_category="parse_error"))
    ledger.record(_item("k2"), Outcome("failed", error_category="parse_error"))
    assert not ledger.get("k2").needs_attempt(2)  # type: ignore[union-attr]
    assert ledger.reset_failed(category="timeout") == 0
    assert ledger.reset_failed(repo="other") == 0
    assert ledger.reset_failed(repo="repo", category="parse_error") == 1
    assert ledger.get("k2").attempts == 0  # type: ignore[union-attr]


def test_record_attempts_and_ok_rows_are_final(state_target: str | Path) -> None:
    state = StateStore(state_target)
    ledger = Ledger(state)
    ledger.record(_item(), Outcome("failed", output="raw", error_category="parse_error", error_message="junk"))
    entry = ledger.get("k1")
    assert entry is not None and entry.status == "failed" and entry.attempts == 1 and entry.output == "raw"
    assert entry.needs_attempt(2) and not entry.needs_attempt(1)
    ledger.record(
        _item(),
        Outcome(
            "ok", output="text", parsed=["q1?"], prompt_tokens=10, completion_tokens=5, latency_ms=12.5, trimmed=True
        ),
    )
    entry = ledger.get("k1")
    assert entry is not None and entry.ok and entry.attempts == 2 and entry.parsed() == ["q1?"]
    assert (entry.prompt_tokens, entry.completion_tokens, entry.trimmed) == (10, 5, 1)
    assert entry.error_category is None
    ledger.record(_item(), Outcome("failed", error_category="timeout"))  # a racing writer cannot undo it
    entry = ledger.get("k1")
    assert entry is not None and entry.ok and entry.attempts == 2
    assert ledger.counts() == {"ok": 1}

    # a second store (another connection) sees the committed row
    with StateStore(state_target) as other:
        assert other.query("SELECT COUNT(*) FROM generation_ledger")[0][0] == 1
        if not other.postgres:  # WAL: readers and a writer at once
            assert other.query("PRAGMA journal_mode")[0][0] == "wal"
    state.close()


def test_get_many_handles_many_keys(state_target: str | Path) -> None:
    ledger = Ledger(StateStore(state_target))
    for i in range(1200):
        ledger.record(_item(f"k{i}"), Outcome("ok", output=str(i)))
    found = ledger.get_many([f"k{i}" for i in range(0, 1300)])
    assert len(found) == 1200 and found["k1199"].output == "1199"


@pytest.fixture
def runner_parts(settings: Settings, tmp_path: Path):
    state = StateStore(settings.state_target)
    ledger = Ledger(state)
    prompts = PromptManager(PROMPTS_SRC)
    chunks = select_chunks(chunk_rows("repo", SAMPLE_FILES), None)
    return state, ledger, prompts, chunks


def _runner(
    backend: ScriptedBackend, state: StateStore, ledger: Ledger, settings: Settings, stage: str = "questions"
) -> StageRunner:
    return StageRunner(
        backend=backend,
        ledger=ledger,
        state=state,
        generation=settings.config.generation,
        performance=settings.config.performance,
        repo="repo",
        stage=stage,
        pause_hook=lambda: None,
    )


def test_runner_reuses_retries_and_exhausts(settings: Settings, runner_parts) -> None:
    state, ledger, prompts, chunks = runner_parts
    # across runs: no retry within the run (the next test)
    gen = settings.config.generation.model_copy(update={"max_attempts": 2, "batch_size": 2, "retries_in_run": 0})
    settings = Settings(settings.config.model_copy(update={"generation": gen}), settings.path, settings.root)
    themes = [prompts.theme("testing"), prompts.theme("debugging")]
    work = plan_questions(chunks, themes, "scripted", gen, "repo")
    # the debugging theme's reply is unparseable; "possible bugs" is only in its instruction
    backend = ScriptedBackend(replies={"possible bugs": "no idea"})
    stats = _runner(backend, state, ledger, settings).run(work, question_postprocess(gen))
    assert stats.total == len(work) and stats.generated == len(chunks) and stats.failed == len(chunks)
    assert stats.failures == {"parse_error": len(chunks)}
    assert len(backend.calls) == len(work)
    assert all(r.prefix_messages == 2 for r in backend.calls)
    # wide batches keep each chunk's themes together
    assert [r.key for r in backend.calls] == [w.item.key for w in work]

    failures = (
        state.connection()
        .execute("SELECT category FROM failures WHERE repo = 'repo' AND stage = 'questions'")
        .fetchall()
    )
    assert [f["category"] for f in failures] == ["parse_error"] * len(chunks)
    progress = state.progress("repo")[0]
    assert (progress.done, progress.failed, progress.total) == (len(chunks), len(chunks), len(work))

    # run 2: only the failed items, with a different seed (attempt 2)
    backend2 = ScriptedBackend(replies={"possible bugs": "no idea"})
    stats = _runner(backend2, state, ledger, settings).run(work, question_postprocess(gen))
    assert stats.reused == len(chunks) and len(backend2.calls) == len(chunks)
    assert {r.seed for r in backend2.calls} == {gen.seed + 1}

    # run 3: attempts exhausted, no calls
    backend3 = ScriptedBackend()
    stats = _runner(backend3, state, ledger, settings).run(work, question_postprocess(gen))
    assert backend3.calls == [] and stats.exhausted == len(chunks)
    shown = (
        state.connection()
        .execute("SELECT category, message FROM failures WHERE repo = 'repo' AND stage = 'questions'")
        .fetchall()
    )
    assert len(shown) == len(chunks)
    assert all(f["category"] == "parse_error" and "no attempts left (2/2)" in f["message"] for f in shown)

    entries = ledger.get_many(w.item.key for w in work)
    table = questions_table(work, entries, "repo")
    assert table.num_rows == len(chunks) * 2
    assert set(table.column("theme").to_pylist()) == {"testing"}
    raw = [e for e in entries.values() if e.status == "failed"]
    assert all(e.output == "no idea" and e.attempts == 2 for e in raw)
    assert json.loads(table.column("params")[0].as_py())["n_questions"] == gen.questions_per_chunk


class FirstSeedUnparseable(ScriptedBackend):
    """The debugging theme's first sample cannot be parsed; a later seed's can (when ``fixed``)."""

    def __init__(self, base_seed: int, fixed: bool = True) -> None:
        super().__init__()
        self.base_seed, self.fixed = base_seed, fixed

    snapshot: bool = False
    """Read the requests once per call (as the OpenAI backend does) instead of as it goes."""

    def generate(self, requests):
        self.call_of: dict[tuple[str, int], int] = getattr(self, "call_of", {})
        self.generate_calls = getattr(self, "generate_calls", 0) + 1
        for request in list(requests) if self.snapshot else requests:
            self.call_of[(request.key, request.seed)] = self.generate_calls
            bad = "possible bugs" in request.messages[-1].content and (request.seed == self.base_seed or not self.fixed)
            self.replies = {"possible bugs": "no idea"} if bad else {}
            yield from super().generate([request])


def _failures(state: StateStore) -> list[str]:
    rows = state.connection().execute("SELECT category FROM failures WHERE repo = 'repo' AND stage = 'questions'")
    return [r["category"] for r in rows.fetchall()]


@pytest.mark.parametrize("snapshot", [False, True], ids=["feed-read-as-it-goes", "feed-read-once"])
@pytest.mark.parametrize("fixed", [True, False], ids=["retry-parses", "retry-fails-too"])
def test_runner_sends_unparseable_replies_again_in_the_same_run(
    settings: Settings, runner_parts, fixed: bool, snapshot: bool
) -> None:
    state, ledger, prompts, chunks = runner_parts
    gen = settings.config.generation.model_copy(update={"max_attempts": 3, "batch_size": 2, "retries_in_run": 1})
    settings = Settings(settings.config.model_copy(update={"generation": gen}), settings.path, settings.root)
    work = plan_questions(chunks, [prompts.theme("testing"), prompts.theme("debugging")], "scripted", gen, "repo")
    backend = FirstSeedUnparseable(gen.seed, fixed=fixed)
    backend.snapshot = snapshot
    stats = _runner(backend, state, ledger, settings).run(work, question_postprocess(gen))

    n = len(chunks)  # one debugging item per chunk fails its first sample
    assert len(backend.calls) == len(work) + n and stats.llm_requests == len(work) + n
    resent = [r for r in backend.calls if r.seed != gen.seed]
    debugging_keys = sorted(w.item.key for w in work if w.item.theme == "debugging")
    assert [r.seed for r in resent] == [gen.seed + 1] * n  # the next seed
    assert sorted(r.key for r in resent) == debugging_keys
    # A backend reading the feed as it goes runs each retry in the call that returned the
    # unusable reply; one that reads it once gets the retries in its next call.
    assert [backend.call_of[(k, gen.seed + 1)] - backend.call_of[(k, gen.seed)] for k in debugging_keys] == [
        int(snapshot)
    ] * n
    assert stats.retried == n
    entries = ledger.get_many(w.item.key for w in work)
    debugging = [entries[w.item.key] for w in work if w.item.theme == "debugging"]
    assert [e.attempts for e in debugging] == [2] * n
    progress = state.progress("repo")[0]
    if fixed:
        assert (stats.generated, stats.failed, stats.missing, dict(stats.failures)) == (len(work), 0, 0, {})
        assert all(e.ok for e in entries.values())
        assert _failures(state) == []  # the first sample's failure is not left on the viewer's list
        assert (progress.done, progress.failed, progress.total) == (len(work), 0, len(work))
    else:
        assert (stats.generated, stats.failed, stats.missing, dict(stats.failures)) == (n, n, n, {"parse_error": n})
        assert _failures(state) == ["parse_error"] * n  # once per item, not once per sample
        assert (progress.done, progress.failed, progress.total) == (n, n, len(work))
        # one attempt left for the next run, which tries once more and retries no further
        backend2 = FirstSeedUnparseable(gen.seed, fixed=False)
        stats2 = _runner(backend2, state, ledger, settings).run(work, question_postprocess(gen))
        assert [r.seed for r in backend2.calls] == [gen.seed + 2] * n and stats2.retried == 0


@pytest.mark.parametrize("retries", [1, 2], ids=["one-retry", "two-retries-together"])
def test_retries_the_backend_never_took_keep_their_failure(settings: Settings, runner_parts, retries: int) -> None:
    """A backend that read its requests once and then crashed never took the retries queued
    while it streamed: their items keep their ``parse_error`` (one attempt used, not two, and
    not a ``backend_error``), once per item however many samples were queued."""
    state, ledger, prompts, chunks = runner_parts
    gen = settings.config.generation.model_copy(update={"max_attempts": 3, "batch_size": 8, "retries_in_run": retries})
    settings = Settings(settings.config.model_copy(update={"generation": gen}), settings.path, settings.root)
    work = plan_questions(chunks, [prompts.theme("debugging")], "scripted", gen, "repo")

    class CrashesAfterItsResults(FirstSeedUnparseable):
        snapshot = True

        def generate(self, requests):
            yield from super().generate(requests)
            raise RuntimeError("server went away")

    backend = CrashesAfterItsResults(gen.seed)
    stats = _runner(backend, state, ledger, settings).run(work, question_postprocess(gen))
    n = len(work)
    assert len(backend.calls) == n and {r.seed for r in backend.calls} == {gen.seed}
    entries = ledger.get_many(w.item.key for w in work)
    assert [(e.attempts, e.error_category) for e in entries.values()] == [(1, "parse_error")] * n
    assert (dict(stats.failures), stats.failed, stats.retried, stats.llm_requests) == ({"parse_error": n}, n, 0, n)
    assert sorted(_failures(state)) == ["parse_error"] * n
    assert state.progress("repo")[0].failed == n


def test_runner_does_not_resend_at_temperature_zero(settings: Settings, runner_parts) -> None:
    """Greedy decoding gives the same reply to every seed: a retry in the run would be waste."""
    state, ledger, prompts, chunks = runner_parts
    gen = settings.config.generation.model_copy(update={"temperature": 0.0, "retries_in_run": 2})
    settings = Settings(settings.config.model_copy(update={"generation": gen}), settings.path, settings.root)
    work = plan_questions(chunks, [prompts.theme("debugging")], "scripted", gen, "repo")
    backend = FirstSeedUnparseable(gen.seed)
    stats = _runner(backend, state, ledger, settings).run(work, question_postprocess(gen))
    assert len(backend.calls) == len(work) and stats.retried == 0 and stats.failed == len(work)


class CircuitOpensAfter(ScriptedBackend):
    """Replies to its first ``results`` requests, then its circuit breaker opens."""

    def __init__(self, results: int) -> None:
        super().__init__()
        self.results = results

    def generate(self, requests):
        for i, result in enumerate(super().generate(requests)):
            if i == self.results:
                raise CircuitOpenError("server down")
            yield result


def test_runner_circuit_open_keeps_finished_items(settings: Settings, runner_parts) -> None:
    state, ledger, prompts, chunks = runner_parts
    gen = settings.config.generation
    work = plan_questions(chunks, [prompts.theme("testing")], "scripted", gen, "repo")
    with pytest.raises(CircuitOpenError):
        _runner(CircuitOpensAfter(2), state, ledger, settings).run(work, question_postprocess(gen))
    assert ledger.counts() == {"ok": 2}
    stats = _runner(ScriptedBackend(), state, ledger, settings).run(work, question_postprocess(gen))
    assert stats.reused == 2 and stats.generated == len(work) - 2


def test_runner_records_backend_errors_and_missing_results(settings: Settings, runner_parts) -> None:
    state, ledger, prompts, chunks = runner_parts
    gen = settings.config.generation
    work = plan_questions(chunks[:3], [prompts.theme("testing")], "scripted", gen, "repo")

    class Lossy(ScriptedBackend):
        def generate(self, requests: list[GenerationRequest]):  # type: ignore[override]
            results: list[GenerationResult] = list(super().generate(requests))
            yield from results[:-1]  # drops the last one silently

    stats = _runner(Lossy(), state, ledger, settings).run(work, question_postprocess(gen))
    assert stats.generated == 2 and stats.failures == {"backend_error": 1}

    backend = ScriptedBackend(fail={"unit testing": "timeout"})
    work2 = plan_questions(chunks[3:5], [prompts.theme("testing")], "scripted", gen, "repo")
    stats = _runner(backend, state, ledger, settings).run(work2, question_postprocess(gen))
    assert stats.failures == {"timeout": 2}
    assert {e.error_category for e in ledger.get_many(w.item.key for w in work2).values()} == {"timeout"}


_LEDGER_V1 = (
    "CREATE TABLE generation_ledger (key TEXT PRIMARY KEY, kind TEXT NOT NULL, repo TEXT NOT NULL,"
    " chunk_key TEXT NOT NULL, theme TEXT NOT NULL, template_hash TEXT NOT NULL, model_id TEXT NOT NULL,"
    " params_json TEXT NOT NULL, input_text TEXT, status TEXT NOT NULL, output TEXT, parsed_json TEXT,"
    " error_category TEXT, error_message TEXT, attempts INTEGER NOT NULL DEFAULT 0,"
    " prompt_tokens INTEGER NOT NULL DEFAULT 0, cached_prompt_tokens INTEGER NOT NULL DEFAULT 0,"
    " completion_tokens INTEGER NOT NULL DEFAULT 0, latency_ms REAL NOT NULL DEFAULT 0,"
    " trimmed INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL)"
)


def test_older_ledger_gains_new_columns(state_target: str | Path) -> None:
    """A pre-versioning database (first-release ledger, no schema_versions) migrates to the current version."""
    with StateStore(state_target, readonly=False) as raw:
        with raw.transaction() as con:
            con.execute("DROP TABLE IF EXISTS schema_versions")
            con.execute(pg_ddl(_LEDGER_V1) if raw.postgres else _LEDGER_V1)
            con.execute(
                "INSERT INTO generation_ledger (key, kind, repo, chunk_key, theme, template_hash, model_id,"
                " params_json, status, output, attempts, created_at, updated_at)"
                " VALUES ('old', 'answer', 'r', 'c', 't', 'h', 'm', '{}', 'ok', 'text', 1, 0, 0)"
            )
        assert "max_tokens" not in raw.columns("generation_ledger")
    with StateStore(state_target) as state:
        ledger = Ledger(state)
        assert state.schema_version("generation_ledger") == LEDGER_VERSION
        old = ledger.get("old")
        assert old is not None and old.ok and old.max_tokens == 0 and old.finish_reason is None
        assert old.seed_sent is None
        ledger.record(_item("new"), Outcome("ok", output="x", max_tokens=64, finish_reason="length", seed_sent=False))
        new = ledger.get("new")
        assert new is not None and (new.max_tokens, new.finish_reason, new.seed_sent) == (64, "length", 0)
    with StateStore(state_target) as again:  # idempotent: a second open changes nothing
        Ledger(again)
        assert again.schema_version("generation_ledger") == LEDGER_VERSION
        assert len(Ledger(again).entries()) == 2


def test_newer_schema_is_refused(state_target: str | Path) -> None:
    with StateStore(state_target) as state:
        Ledger(state)
        with state.transaction() as con:
            con.execute("UPDATE schema_versions SET version = 99 WHERE component = 'generation_ledger'")
    with StateStore(state_target) as state, pytest.raises(StateSchemaError, match=r"schema version 99 .*newer"):
        Ledger(state)


def test_one_column_list_is_the_table_the_entry_and_the_readers(state_target: str | Path) -> None:
    from dataclasses import fields

    from cicdllm_assets.generation.ledger import LEDGER_COLUMNS, LEDGER_TABLE, LedgerEntry
    from cicdllm_assets.storage.state import open_state_readonly

    names = [name for name, _ in LEDGER_COLUMNS]
    assert [f.name for f in fields(LedgerEntry)] == names
    reader = open_state_readonly(state_target)
    assert reader is None or Ledger.existing(reader) is None  # nothing created by a reader
    with StateStore(state_target) as state:
        ledger = Ledger(state)
        assert state.columns(LEDGER_TABLE) == set(names)
        ledger.record(_item("q"), Outcome("ok", output="raw", parsed=["a?", "b?"], completion_tokens=7))
        answer = LedgerItem("a", "answer", "repo", "chunk", "testing", "tpl", "model", "{}", "a?")
        ledger.record(answer, Outcome("ok", output="yes", completion_tokens=5))
        ledger.record(_item("f"), Outcome("failed", error_category="parse_error", completion_tokens=3))
        first, stored = ledger.get("q"), ledger.get("a")
        assert stored is not None and stored.input_text == "a?" and stored.completion_tokens == 5
        assert first is not None
    with open_state_readonly(state_target) as readonly:  # type: ignore[union-attr]
        existing = Ledger.existing(readonly)
        assert existing is not None
        assert existing.generated_counts() == {"repo": {"questions": 2, "answers": 1}}
        assert existing.completion_tokens_since(first.updated_at) == (15, first.updated_at)
        assert existing.completion_tokens_since(stored.updated_at) == (8, stored.updated_at)  # a, then f
        assert existing.completion_tokens_since(stored.updated_at + 3600) == (0, None)


@pytest.mark.parametrize("fixed", [True, False], ids=["retry-parses", "retry-fails-too"])
def test_a_chunks_answers_join_the_feed_once_its_questions_are_final(
    settings: Settings, runner_parts, fixed: bool
) -> None:
    """A :class:`FollowOn` sends a chunk's answers in the questions' feed as soon as every
    question item of the chunk is final (after its retry, ok or not), counted apart."""
    state, ledger, prompts, chunks = runner_parts
    gen = settings.config.generation.model_copy(update={"max_attempts": 3, "batch_size": 2, "retries_in_run": 1})
    settings = Settings(settings.config.model_copy(update={"generation": gen}), settings.path, settings.root)
    work = plan_questions(chunks, [prompts.theme("testing"), prompts.theme("debugging")], "scripted", gen, "repo")
    backend = FirstSeedUnparseable(gen.seed, fixed=fixed)
    planner = AnswerPlanner.for_repo(chunks, prompts, "scripted", gen, "repo", backend.count_tokens)
    answers_runner = _runner(backend, state, ledger, settings, stage="answers")
    follow = FollowOn(answers_runner, answer_postprocess, planner.ahead)
    stats = _runner(backend, state, ledger, settings).run(work, question_postprocess(gen), follow)

    n = len(chunks)
    assert (stats.generated, stats.failed) == ((2 * n, 0) if fixed else (n, n))  # questions only
    entries = ledger.get_many(w.item.key for w in work)
    table, dropped = final_questions(work, entries, "repo")  # as the asset does
    expected = planner.plan(table.to_pylist())[0]
    # the scripted questions are the same for both themes: a chunk's second theme's are dropped
    assert (len(expected), dropped) == (n * gen.questions_per_chunk, n * gen.questions_per_chunk if fixed else 0)
    assert (follow.stats.generated, follow.stats.failed) == (len(expected), 0)
    assert all(ledger.get(a.work.item.key).ok for a in expected)  # type: ignore[union-attr]
    position = {r.key: i for i, r in enumerate(backend.calls)}  # a question's last sample, an answer's only one
    for chunk in chunks:
        last_question = max(position[w.item.key] for w in work if w.chunk.chunk_key == chunk.chunk_key)
        answers = [position[a.work.item.key] for a in expected if a.work.chunk.chunk_key == chunk.chunk_key]
        assert answers and min(answers) > last_question
    assert len(backend.calls) == len(work) + n + len(expected)  # one retry per chunk, each answer once
    progress = {p.stage: p for p in state.progress("repo")}
    assert (progress["answers"].done, progress["answers"].total) == (len(expected), len(expected))


class RepliesLastFirst(ScriptedBackend):
    """Takes what the feed holds, replies to it last request first (a later sample's reply comes
    before an earlier one's), then takes again. The debugging theme's reply depends on the seed
    offset: ``usable`` maps an offset to a parseable reply's marker; other offsets get junk."""

    def __init__(self, base_seed: int, usable: dict[int, str]) -> None:
        super().__init__()
        self.base_seed, self.usable = base_seed, usable
        self.seen_together: list[list[int]] = []

    def generate(self, requests):
        feed = RequestFeed.of(requests)
        while batch := feed.take():
            self.seen_together.append(
                [r.seed - self.base_seed for r in batch if "possible bugs" in r.messages[-1].content]
            )
            for request in reversed(batch):
                marker = self.usable.get(request.seed - self.base_seed)
                bugs = "possible bugs" in request.messages[-1].content
                reply = f'["What breaks {marker} here exactly?", "Which input fails {marker} first?"]'
                self.replies = {"possible bugs": reply if marker else "no idea"} if bugs else {}
                yield from super().generate([request])


@pytest.mark.parametrize(
    ("usable", "parallel", "expected"),
    [
        ({1: "A", 2: "B"}, True, (2, "A")),  # the first retry is usable: the second's reply is dropped
        ({2: "B"}, True, (3, "B")),  # only the second retry is usable
        ({}, True, (3, None)),  # none is: one failure per item
        ({1: "A", 2: "B"}, False, (2, "A")),  # one after the other: the second retry is never sent
    ],
    ids=["first-retry-usable", "second-retry-usable", "none-usable", "one-at-a-time"],
)
def test_remaining_samples_go_out_together_and_are_taken_in_seed_order(
    settings: Settings, runner_parts, usable: dict[int, str], parallel: bool, expected: tuple[int, str | None]
) -> None:
    """With ``generation.parallel_retries`` an item's remaining in-run samples are sent together
    after its first unusable reply; their replies are taken in seed order whatever order they
    come in, so the ledger holds what sending them one after the other would."""
    state, ledger, prompts, chunks = runner_parts
    gen = settings.config.generation.model_copy(
        update={"max_attempts": 3, "retries_in_run": 2, "parallel_retries": parallel, "batch_size": 64}
    )
    settings = Settings(settings.config.model_copy(update={"generation": gen}), settings.path, settings.root)
    work = plan_questions(chunks, [prompts.theme("testing"), prompts.theme("debugging")], "scripted", gen, "repo")
    backend = RepliesLastFirst(gen.seed, usable)
    stats = _runner(backend, state, ledger, settings).run(work, question_postprocess(gen))

    n = len(chunks)
    debugging = [w.item.key for w in work if w.item.theme == "debugging"]
    entries = ledger.get_many(debugging)
    attempts, marker = expected
    assert {(e.attempts, e.ok) for e in entries.values()} == {(attempts, marker is not None)}
    if marker is not None:
        assert all(f"What breaks {marker} here" in q for e in entries.values() for q in e.parsed()[:1])
    sent = sorted(r.seed - gen.seed for r in backend.calls if r.key.split("#")[0] in debugging)
    retries = 2 if parallel or not usable.get(1) else 1
    assert sent == sorted([0] * n + [1] * n + ([2] * n if retries == 2 else []))
    if parallel:  # both retries of an item were in the feed together
        assert [1, 2] * n == [s for batch in backend.seen_together for s in batch if s]
    assert (stats.retried, stats.llm_requests) == (retries * n, len(work) + retries * n)
    ok = marker is not None
    assert (stats.generated, stats.failed, dict(stats.failures)) == (
        (len(work), 0, {}) if ok else (n, n, {"parse_error": n})
    )
    progress = state.progress("repo")[0]
    assert (progress.done, progress.failed) == ((len(work), 0) if ok else (n, n))
    assert _failures(state) == ([] if ok else ["parse_error"] * n)


def test_a_crash_with_one_sample_out_and_one_queued_counts_one_failure(settings: Settings, runner_parts) -> None:
    """Two retries sent together; the backend takes the first and crashes before replying: the
    item fails once (the sample it took, ``backend_error``), not again for the one never taken."""
    state, ledger, prompts, chunks = runner_parts
    gen = settings.config.generation.model_copy(update={"max_attempts": 3, "retries_in_run": 2})
    settings = Settings(settings.config.model_copy(update={"generation": gen}), settings.path, settings.root)
    work = plan_questions(chunks[:1], [prompts.theme("debugging")], "scripted", gen, "repo")

    class CrashesOnTheFirstRetry(FirstSeedUnparseable):
        def generate(self, requests):
            for request in requests:  # takes one request at a time
                if request.seed != self.base_seed:
                    raise RuntimeError("server went away")
                yield from super().generate([request])

    backend = CrashesOnTheFirstRetry(gen.seed, fixed=False)
    stats = _runner(backend, state, ledger, settings).run(work, question_postprocess(gen))
    entry = ledger.get(work[0].item.key)
    assert entry is not None and (entry.attempts, entry.error_category) == (2, "backend_error")
    assert (stats.failed, dict(stats.failures), stats.retried, stats.llm_requests) == (1, {"backend_error": 1}, 1, 2)
    assert _failures(state) == ["backend_error"] and state.progress("repo")[0].failed == 1


def test_answers_ahead_survive_an_open_circuit_and_their_stage_is_not_left_running(
    settings: Settings, runner_parts
) -> None:
    """The circuit opens after the questions and two answers sent ahead: both answers stay in
    the ledger (the answers step reuses them), and the answers stage is marked ``interrupted``."""
    state, ledger, prompts, chunks = runner_parts
    gen = settings.config.generation
    work = plan_questions(chunks, [prompts.theme("testing")], "scripted", gen, "repo")
    backend = CircuitOpensAfter(len(work) + 2)
    planner = AnswerPlanner.for_repo(chunks, prompts, "scripted", gen, "repo", backend.count_tokens)
    follow = FollowOn(_runner(backend, state, ledger, settings, "answers"), answer_postprocess, planner.ahead)
    with pytest.raises(CircuitOpenError):
        _runner(backend, state, ledger, settings).run(work, question_postprocess(gen), follow)
    assert follow.stats.generated == 2
    assert {p.stage: p.status for p in state.progress("repo")}["answers"] == "interrupted"
    entries = ledger.get_many(w.item.key for w in work)
    table, _ = final_questions(work, entries, "repo")
    answers = [a.work for a in planner.plan(table.to_pylist())[0]]
    stats = _runner(ScriptedBackend(), state, ledger, settings, "answers").run(answers, answer_postprocess)
    assert (stats.reused, stats.generated) == (2, len(answers) - 2)


def test_answers_ahead_go_out_a_group_width_at_a_time(settings: Settings, runner_parts) -> None:
    """Chunks whose questions a previous run made are settled at once: their answers wait in a
    backlog and join the feed at most a group's width (batch width x 4) at a time, not all at once."""
    state, ledger, prompts, chunks = runner_parts
    gen = settings.config.generation.model_copy(update={"batch_size": 1})  # groups of 4
    settings = Settings(settings.config.model_copy(update={"generation": gen}), settings.path, settings.root)
    themes = [prompts.theme("testing"), prompts.theme("debugging")]
    _runner(ScriptedBackend(), state, ledger, settings).run(
        plan_questions(chunks[:5], themes, "scripted", gen, "repo"), question_postprocess(gen)
    )

    class TakesWhatIsThere(ScriptedBackend):
        answers_per_take: list[int] = []

        def generate(self, requests):
            feed = RequestFeed.of(requests)
            while batch := feed.take():
                self.answers_per_take.append(sum(1 for r in batch if "Answer" in r.messages[-1].content))
                yield from super().generate(batch)

    backend = TakesWhatIsThere()
    work = plan_questions(chunks, themes, "scripted", gen, "repo")
    planner = AnswerPlanner.for_repo(chunks, prompts, "scripted", gen, "repo", backend.count_tokens)
    follow = FollowOn(_runner(backend, state, ledger, settings, "answers"), answer_postprocess, planner.ahead)
    stats = _runner(backend, state, ledger, settings).run(work, question_postprocess(gen), follow)
    assert (stats.reused, stats.generated) == (10, len(work) - 10)
    expected = planner.plan(final_questions(work, ledger.get_many(w.item.key for w in work), "repo")[0].to_pylist())[0]
    assert follow.stats.generated == len(expected) > 4
    assert max(backend.answers_per_take) == 4 and sum(backend.answers_per_take) == len(expected)


def test_answers_ahead_go_on_while_waiting_for_items_a_dead_run_holds(settings: Settings, runner_parts) -> None:
    """A killed run still holds one chunk's question items: while this run waits for their
    leases to expire, the answers of every other chunk (questions already made) are generated;
    then the held items, and their chunk's answers too."""
    from cicdllm_assets.generation.leases import Leases

    state, ledger, prompts, chunks = runner_parts
    perf = settings.config.performance.model_copy(update={"lease_seconds": 3.0})
    settings = Settings(settings.config.model_copy(update={"performance": perf}), settings.path, settings.root)
    gen = settings.config.generation
    work = plan_questions(chunks, [prompts.theme("testing")], "scripted", gen, "repo")
    _runner(ScriptedBackend(), state, ledger, settings).run(work[1:], question_postprocess(gen))
    Leases(state, ttl_seconds=3.0, holder="killed-run").claim([work[0].item.key])  # never released

    class Timed(ScriptedBackend):
        answered_at: list[float] = []

        def generate(self, requests):
            for result in super().generate(requests):
                if "Answer" in self.calls[-1].messages[-1].content:
                    self.answered_at.append(time.monotonic())
                yield result

    backend = Timed()
    planner = AnswerPlanner.for_repo(chunks, prompts, "scripted", gen, "repo", backend.count_tokens)
    follow = FollowOn(_runner(backend, state, ledger, settings, "answers"), answer_postprocess, planner.ahead)
    started = time.monotonic()
    stats = _runner(backend, state, ledger, settings).run(work, question_postprocess(gen), follow)
    questions_done = ledger.get(work[0].item.key)
    assert questions_done is not None and questions_done.ok and stats.generated == 1
    expected = planner.plan(final_questions(work, ledger.get_many(w.item.key for w in work), "repo")[0].to_pylist())[0]
    assert follow.stats.generated == len(expected)
    early = [t - started for t in backend.answered_at if t - started < 2.5]  # before the lease expired
    assert len(early) == len(expected) - gen.questions_per_chunk  # all but the held chunk's


def test_answers_another_run_holds_are_left_to_it(settings: Settings, runner_parts) -> None:
    """An answer item another live run holds is not sent ahead; the rest are."""
    from cicdllm_assets.generation.leases import Leases

    state, ledger, prompts, chunks = runner_parts
    gen = settings.config.generation
    work = plan_questions(chunks, [prompts.theme("testing")], "scripted", gen, "repo")
    _runner(ScriptedBackend(), state, ledger, settings).run(work[1:], question_postprocess(gen))
    backend = ScriptedBackend()
    planner = AnswerPlanner.for_repo(chunks, prompts, "scripted", gen, "repo", backend.count_tokens)
    ready = planner.plan(
        final_questions(work[1:], ledger.get_many(w.item.key for w in work[1:]), "repo")[0].to_pylist()
    )[0]
    held = ready[0].work.item.key
    Leases(state, ttl_seconds=600, holder="other-run").claim([held])
    follow = FollowOn(_runner(backend, state, ledger, settings, "answers"), answer_postprocess, planner.ahead)
    _runner(backend, state, ledger, settings).run(work, question_postprocess(gen), follow)
    sent = {r.key for r in backend.calls}
    assert held not in sent and {a.work.item.key for a in ready[1:]} <= sent
    assert ledger.get(held) is None
