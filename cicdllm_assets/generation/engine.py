"""The generation engine: plan items against the ledger, run the missing ones in wide batches, record outcomes.

Planning computes every item's content key and looks it up in the ledger; only
missing items (or failed ones with attempts left) go to the backend, in wide batches
ordered by chunk so a backend can reuse each chunk's prefix cache. An item whose reply
could not be used (``parse_error``) is sent again in the same run, with the next seed, up to
``generation.retries_in_run`` times (sampling at temperature > 0 only), as soon as the reply
comes back: it joins the request feed of its group, so a backend that reads the feed as it
goes (MLX) decodes it in the running batch. Every result is
committed to the ledger as it arrives; the output tables are then built from the
ledger, so a no-op re-run makes no LLM call and a killed run resumes where it stopped.
The two stages (questions_stage, answers_stage) plan work items and tabulate results.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cicdllm_assets.config.models import GenerationConfig, PerformanceConfig
from cicdllm_assets.errors import CicdllmError, Log
from cicdllm_assets.generation.chunks import Chunk
from cicdllm_assets.generation.context import ContextOverflowError, MessageBuilder, fit_prompt
from cicdllm_assets.generation.leases import Leases
from cicdllm_assets.generation.ledger import (
    Ledger,
    LedgerEntry,
    LedgerItem,
    Outcome,
    is_outage,
)
from cicdllm_assets.generation.prompts import PREFIX_MESSAGES
from cicdllm_assets.llm.base import (
    CircuitOpenError,
    GenerationRequest,
    GenerationResult,
    LLMBackend,
    RequestFeed,
    StopCheck,
    request_secrets,
)
from cicdllm_assets.performance.battery import pause_while_on_low_battery
from cicdllm_assets.storage.llm_load import write_llm_load
from cicdllm_assets.storage.state import StateStore

logger = logging.getLogger(__name__)

WIDE_BATCH_FACTOR = 4
"""Requests handed to the backend per call: the batch width x this."""

FALLBACK_BATCH_WIDTH = 8
"""Width for ``generation.batch_size: auto`` with a backend that does not choose one."""

MAX_CONSECUTIVE_BATCH_ERRORS = 2

RETRY_IN_RUN_CATEGORIES = frozenset({"parse_error"})
"""Failures another sample may fix; the rest (outages, secrets, context overflow) are not
re-sent in the same run: the backend retries outages itself, the others fail the same way."""

SAMPLE_KEY_SEPARATOR = "#"
"""Joins an item key and a seed in the request key of a sample sent beside an earlier one."""

LEASE_POLL_SECONDS = 0.5
"""How often a run re-reads the ledger for items another run holds."""


@dataclass(frozen=True)
class WorkItem:
    """One item to generate: its ledger identity, chunk, message builder and budget."""

    item: LedgerItem
    chunk: Chunk
    build: MessageBuilder
    desired_max_tokens: int
    n_questions: int = 0
    kinds: tuple[str, ...] = ()
    stop_when: StopCheck | None = None
    """Ends the completion early (see :mod:`cicdllm_assets.generation.stopping`)."""

    @property
    def label(self) -> str:
        """Human-readable item name for failures and logs."""
        chunk = self.chunk
        return f"{chunk.path}:{chunk.start_line}-{chunk.end_line} [{self.item.theme}] {self.item.key[:12]}"


@dataclass
class RunStats:
    """What one stage run did; turned into asset metadata."""

    total: int = 0
    reused: int = 0
    generated: int = 0
    failed: int = 0
    exhausted: int = 0
    llm_requests: int = 0
    retried: int = 0
    """Samples sent again in this run after a failure another sample may fix."""
    trimmed: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    generate_seconds: float = 0.0
    failed_keys: dict[str, str] = field(default_factory=dict)
    """Items this run recorded as failed, with the category it counted (its last outcome for each)."""
    resent: Counter[str] = field(default_factory=Counter)
    """Samples sent again in this run, per item key (at most ``generation.retries_in_run``)."""
    missing: int = 0
    """Items without an ``ok`` result in the ledger once the run ends (failed, or out of attempts)."""
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def tokens_per_second(self) -> float:
        """Completion tokens per second of backend time in this run."""
        return self.completion_tokens / self.generate_seconds if self.generate_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain values (for metadata and logs)."""
        return {
            "items_total": self.total,
            "generated": self.generated,
            "reused": self.reused,
            "failed": self.failed,
            "exhausted": self.exhausted,
            "missing": self.missing,
            "llm_requests": self.llm_requests,
            "retried_in_run": self.retried,
            "trimmed": self.trimmed,
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "generate_seconds": round(self.generate_seconds, 3),
            "tokens_per_second": round(self.tokens_per_second, 2),
            "failures_by_category": dict(sorted(self.failures.items())),
        }


Postprocess = Callable[[WorkItem, GenerationResult], Outcome]


@dataclass
class FollowOn:
    """A later stage's work that starts as this stage's items settle, in the same request feed:
    the answers of a chunk once its questions are final, so a backend that reads the feed as it
    goes decodes them beside this stage's last items (its retries) instead of after the stage.

    Items the later stage's run would plan the same way are found in the ledger by that run;
    work not sent before this run ends (or held by another run) is left to it."""

    runner: StageRunner
    """The later stage's runner (its stage name for records, progress and failures)."""
    postprocess: Postprocess
    plan: Callable[[Sequence[WorkItem], Mapping[str, LedgerEntry]], Sequence[WorkItem]]
    """A settled unit's items and their ledger entries -> the later stage's work for them."""
    unit: Callable[[WorkItem], str] = lambda w: w.chunk.chunk_key
    """Which items settle together (a chunk's question items)."""
    stats: RunStats = field(default_factory=lambda: RunStats())
    """What the later stage's work did in this run."""


@dataclass(frozen=True)
class _Lane:
    """Whose request a reply answers: the runner recording it, its postprocess and counters."""

    runner: StageRunner
    postprocess: Postprocess
    stats: RunStats
    follow_on: bool = False


_Sent = tuple[_Lane, WorkItem, bool, int]
"""A request in flight: its lane, item, whether its chunk was trimmed, and its token budget."""


class _Ahead:
    """The units of a run with a :class:`FollowOn`: which items are still unsettled, and the
    later stage's work of units that have settled, sent at most ``cap`` at a time."""

    def __init__(self, follow: FollowOn, work: Sequence[WorkItem], leases: Leases, cap: int) -> None:
        self.follow = follow
        self.leases = leases
        self.cap = cap
        self.items: dict[str, list[WorkItem]] = {}
        self.unsettled: dict[str, set[str]] = {}
        self.unit_of: dict[str, str] = {}
        for w in work:
            unit = follow.unit(w)
            self.unit_of[w.item.key] = unit
            self.items.setdefault(unit, []).append(w)
            self.unsettled.setdefault(unit, set()).add(w.item.key)
        self.settled_units: list[str] = []
        self.backlog: list[WorkItem] = []
        self.planned: set[str] = set()
        self.held: set[str] = set()
        self.entries: dict[str, LedgerEntry] = {}
        """Ledger rows of the work :meth:`take` returned (their attempts seed their requests)."""
        self.started = False
        self.lane = _Lane(follow.runner, follow.postprocess, follow.stats, follow_on=True)

    def settle(self, key: str) -> None:
        """``key``'s result is final in this run (ok, or failed with no sample left to send)."""
        unit = self.unit_of.get(key, "")
        keys = self.unsettled.get(unit)
        if keys is None or key not in keys:
            return
        keys.discard(key)
        if not keys:
            self.settled_units.append(unit)
            del self.unsettled[unit]

    def take(self, out: int) -> list[WorkItem]:
        """The later stage's work to send now, claimed, while ``out`` of it is in flight: that of
        the units settled since the last call joins the backlog, which goes out ``cap`` at a time."""
        runner, stats = self.follow.runner, self.follow.stats
        units, self.settled_units = self.settled_units, []
        later: list[WorkItem] = []
        for unit in units:
            items = self.items[unit]
            later += self.follow.plan(items, runner.ledger.get_many(w.item.key for w in items))
        later = [w for w in later if w.item.key not in self.planned]
        self.planned.update(w.item.key for w in later)
        if later:
            before = (stats.reused, stats.exhausted)
            self.backlog += runner.plan(later, stats)[0]
            if not self.started:
                runner.state.start_stage(runner.repo, runner.stage, total=stats.total, unit="items")
                runner.state.clear_failures(runner.repo, runner.stage)
                self.started = True
            done, failed = stats.reused - before[0], stats.exhausted - before[1]
            runner.state.advance(runner.repo, runner.stage, done=done, failed=failed, total=stats.total)
        room = max(0, self.cap - out)
        batch, self.backlog = self.backlog[:room], self.backlog[room:]
        if not batch:
            return []
        held = self.leases.claim([w.item.key for w in batch])
        self.held |= held
        # another run may have finished one since it was planned; one it holds is left to it
        return runner._settled_elsewhere([w for w in batch if w.item.key in held], self.entries, stats)

    def has_work(self) -> bool:
        """Whether settled units or a backlog wait to be sent."""
        return bool(self.settled_units or self.backlog)

    def release(self) -> None:
        """Give up the leases of the later stage's items (sent or not)."""
        self.leases.release(self.held)
        self.held.clear()


def _stdlib_log() -> Log:
    return logger


class StageRunner:
    """Runs the pending items of one stage (``questions`` or ``answers``) of one repo.

    ``generation`` is the ``generation`` section (or the stage's own, e.g. the judge's sampling
    and attempts); ``performance`` gives the lease length and the battery threshold, re-read from
    ``config_path`` while paused on battery (the default ``pause_hook``).
    """

    def __init__(
        self,
        *,
        backend: LLMBackend,
        ledger: Ledger,
        state: StateStore,
        generation: GenerationConfig,
        performance: PerformanceConfig,
        repo: str,
        stage: str,
        log: Log | None = None,
        pause_hook: Callable[[], object] | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.backend = backend
        self.ledger = ledger
        self.state = state
        self.gen = generation
        self.performance = performance
        self.repo = repo
        self.stage = stage
        self.log = log or _stdlib_log()
        self.pause_hook = pause_hook or (
            lambda: pause_while_on_low_battery(performance, state.target, self.log, repo=repo, config_path=config_path)
        )
        self._load_reported = 0.0

    def batch_width(self) -> int:
        """``generation.batch_size``, or with ``auto`` the backend's own choice (MLX: from the
        model size and free memory)."""
        if self.gen.batch_size != "auto":
            return self.gen.batch_size
        preferred = getattr(self.backend, "preferred_batch", None)
        return preferred if isinstance(preferred, int) and preferred > 0 else FALLBACK_BATCH_WIDTH

    def plan(self, work: Sequence[WorkItem], stats: RunStats) -> tuple[list[WorkItem], dict[str, LedgerEntry]]:
        """Split ``work`` into items to send and stored entries; update the reuse counters."""
        entries = self.ledger.get_many(w.item.key for w in work)
        pending: list[WorkItem] = []
        seen: set[str] = set()
        for w in work:
            if w.item.key in seen:
                continue
            seen.add(w.item.key)
            stats.total += 1
            entry = entries.get(w.item.key)
            if entry is None or entry.needs_attempt(self.gen.max_attempts):
                pending.append(w)
            elif entry.ok:
                stats.reused += 1
            else:
                stats.exhausted += 1
        return pending, entries

    def run(self, work: Sequence[WorkItem], postprocess: Postprocess, follow: FollowOn | None = None) -> RunStats:
        """Generate what the ledger lacks, committing each result; raises CircuitOpenError.

        Each group's items are claimed (:class:`Leases`) before their requests are sent; an
        item another live run holds is not sent but waited for, and read from the ledger
        once that run finishes it (or claimed here once its lease expires). At the end every
        item is ``ok`` in the ledger or counted as failed (:meth:`_check_settled`). With
        ``follow``, the later stage's work of each settled unit joins the feed that is running
        (:class:`FollowOn`; its counters in ``follow.stats``).
        """
        stats = RunStats()
        pending, entries = self.plan(work, stats)
        lane = _Lane(self, postprocess, stats)
        self.state.start_stage(self.repo, self.stage, total=stats.total, unit="items")
        self.state.clear_failures(self.repo, self.stage)
        if stats.reused or stats.exhausted:
            self.state.advance(self.repo, self.stage, done=stats.reused, failed=stats.exhausted)
        self._show_exhausted(work, entries)
        self.log.info(
            f"{self.stage}: {stats.total} items, {stats.reused} reused from the ledger,"
            f" {len(pending)} to generate, {stats.exhausted} failed with no attempts left"
        )
        # Only asked when there is work: the MLX backend loads the model to choose a width.
        width = max(1, self.batch_width() * WIDE_BATCH_FACTOR) if pending else 1
        errors = [0]
        ahead = None
        try:
            with Leases(self.state, self.performance.lease_seconds) as leases:
                if follow is not None and pending:
                    ahead = _Ahead(follow, work, leases, width)
                    sending = {w.item.key for w in pending}
                    for w in work:
                        if w.item.key not in sending:
                            ahead.settle(w.item.key)
                waiting: list[WorkItem] = []
                for start in range(0, len(pending), width):
                    group = pending[start : start + width]
                    waiting += self._claim_and_run(leases, group, entries, lane, errors, ahead)
                    done = min(start + width, len(pending))
                    self.log.info(
                        f"{self.stage}: {done}/{len(pending)} planned, {stats.generated} ok, {stats.failed} failed,"
                        f" {len(waiting)} held by other runs, {stats.completion_tokens} completion tokens"
                        f" at {stats.tokens_per_second:.1f} tok/s"
                    )
                if waiting:
                    self.log.info(f"{self.stage}: waiting for {len(waiting)} items another run holds")
                while waiting:  # the later stage's work of settled units goes on meanwhile
                    if ahead is None or not ahead.has_work():
                        time.sleep(LEASE_POLL_SECONDS)
                    rest = self._settled_elsewhere(waiting, entries, stats)
                    if ahead is not None:
                        for key in {w.item.key for w in waiting} - {w.item.key for w in rest}:
                            ahead.settle(key)  # another run finished it
                    still: list[WorkItem] = []
                    for start in range(0, len(rest), width):
                        group = rest[start : start + width]
                        still += self._claim_and_run(leases, group, entries, lane, errors, ahead)
                    waiting = still
            self._check_settled(work, stats)
        except BaseException:
            if ahead is not None and ahead.started:  # its stage will not run now: not left "running"
                follow_runner = ahead.follow.runner
                self.state.finish_stage(self.repo, follow_runner.stage, "interrupted")
            raise
        return stats

    def _check_settled(self, work: Sequence[WorkItem], stats: RunStats) -> None:
        """Set ``stats.missing``; raise when an item has neither an ``ok`` result nor a counted failure.

        A step must never succeed while items it planned silently have no result: the table it
        builds from the ledger would lack them with nothing saying so.
        """
        keys = list(dict.fromkeys(w.item.key for w in work))
        final = self.ledger.get_many(keys)
        stats.missing = sum(1 for key in keys if key not in final or not final[key].ok)
        unaccounted = stats.missing - stats.failed - stats.exhausted
        if unaccounted <= 0:
            if stats.missing:
                self.log.warning(
                    f"{self.stage}: incomplete: {stats.missing} of {len(keys)} items have no result"
                    f" ({stats.failed} failed in this run, {stats.exhausted} out of attempts); the table leaves them"
                    " out and the next run sends those with attempts left again"
                )
            return
        message = (
            f"{self.stage}: {unaccounted} of {len(keys)} items have no result and no recorded failure;"
            " the step stops instead of writing a table without them (re-run to resume)"
        )
        if stats.failures["circuit_open"]:
            raise CircuitOpenError(f"{message}; the backend's circuit breaker is open")
        raise IncompleteStageError(message)

    def _claim_and_run(
        self,
        leases: Leases,
        group: Sequence[WorkItem],
        entries: dict[str, LedgerEntry],
        lane: _Lane,
        errors: list[int],
        ahead: _Ahead | None,
    ) -> list[WorkItem]:
        """Claim ``group``, send what we hold and still lacks a result (and the later stage's work
        ``ahead`` has, even when we hold nothing); return the items others hold."""
        held = leases.claim([w.item.key for w in group])
        # Another holder may have finished an item between our plan and our claim.
        todo = self._settled_elsewhere([w for w in group if w.item.key in held], entries, lane.stats)
        if ahead is not None:
            for key in {w.item.key for w in group if w.item.key in held} - {w.item.key for w in todo}:
                ahead.settle(key)
        if not todo and not (ahead is not None and ahead.has_work()):
            leases.release(held)
            return [w for w in group if w.item.key not in held]
        self.pause_hook()
        try:
            self._run_group(todo, entries, lane, ahead)
            errors[0] = 0
        except CircuitOpenError:
            raise
        except _BatchError as exc:
            errors[0] += 1
            if errors[0] >= MAX_CONSECUTIVE_BATCH_ERRORS:
                raise RuntimeError(
                    f"{self.stage}: the backend failed {errors[0]} batches in a row: {exc.cause}"
                ) from exc.cause
        finally:
            leases.release(held)
        return [w for w in group if w.item.key not in held]

    def _settled_elsewhere(
        self, items: Sequence[WorkItem], entries: dict[str, LedgerEntry], stats: RunStats
    ) -> list[WorkItem]:
        """Count items another run finished (ok, or failed with no attempts left); return the rest."""
        fresh = self.ledger.get_many(w.item.key for w in items)
        rest: list[WorkItem] = []
        for w in items:
            entry = fresh.get(w.item.key)
            if entry is None or entry.needs_attempt(self.gen.max_attempts):
                rest.append(w)
                if entry is not None:
                    entries[w.item.key] = entry  # its attempt count seeds the retry's seed
                continue
            entries[w.item.key] = entry
            if entry.ok:
                stats.reused += 1
                self.state.advance(self.repo, self.stage, done=1)
            else:
                stats.exhausted += 1
                self.state.advance(self.repo, self.stage, done=0, failed=1)
        return rest

    def _samples_left(self, w: WorkItem, stats: RunStats, sent: int = 0) -> tuple[int, int]:
        """How many more samples of ``w`` this run may use, and the attempts it has used: ``w``
        just failed with a reply another sample may fix, and has in-run retries and attempts left
        (0: it stays failed); ``sent`` of them are out already (counted in ``stats.resent``)."""
        key = w.item.key
        if self.gen.temperature <= 0 or stats.failed_keys.get(key) not in RETRY_IN_RUN_CATEGORIES:
            return 0, 0
        entry = self.ledger.get_many([key]).get(key)
        if entry is None or entry.ok or entry.error_category not in RETRY_IN_RUN_CATEGORIES:
            return 0, 0  # another run has written it since
        left = min(self.gen.retries_in_run - stats.resent[key] + sent, self.gen.max_attempts - entry.attempts)
        return max(0, left), entry.attempts

    def _take_back_failure(self, w: WorkItem, stats: RunStats) -> str:
        """Another sample of ``w`` is coming: its last failure is not final (counters and the
        viewer's list); returns the failure's category."""
        category = stats.failed_keys.pop(w.item.key)
        stats.failed -= 1
        stats.failures[category] -= 1
        stats.failures += Counter()  # drop categories counted down to zero
        self.state.advance(self.repo, self.stage, done=0, failed=-1)
        self.state.forget_failures(self.repo, self.stage, [w.label])
        return category

    def _resend(self, w: WorkItem, stats: RunStats) -> list[tuple[GenerationRequest, bool]]:
        """The requests for more samples of ``w`` after a failure :meth:`_samples_left` allows:
        the next one, or with ``generation.parallel_retries`` every one left at once (a sample
        after the first of them has its seed in its request key, ``key#seed``). Empty: ``w``
        stays failed."""
        left, attempts = self._samples_left(w, stats)
        if not left:
            return []
        requests = []
        for i in range(left if self.gen.parallel_retries else 1):
            prepared = self._request_for(w, attempts + i, stats)
            if prepared is None:
                break
            request, trimmed = prepared
            if i:
                request = dataclasses.replace(request, key=f"{request.key}{SAMPLE_KEY_SEPARATOR}{request.seed}")
            requests.append((request, trimmed))
        stats.resent[w.item.key] += len(requests)
        stats.retried += len(requests)
        return requests

    def _show_exhausted(self, work: Sequence[WorkItem], entries: Mapping[str, LedgerEntry]) -> None:
        """Keep failures that will not be retried visible to the viewer after the clear."""
        shown: set[str] = set()
        for w in work:
            entry = entries.get(w.item.key)
            if entry is None or entry.ok or entry.needs_attempt(self.gen.max_attempts) or entry.key in shown:
                continue
            shown.add(entry.key)
            message = f"no attempts left ({entry.attempts}/{self.gen.max_attempts}): {entry.error_message or ''}"
            self.state.record_failure(self.repo, self.stage, w.label, entry.error_category or "backend_error", message)

    def _fit(self, w: WorkItem, attempt: int, stats: RunStats) -> tuple[GenerationRequest, bool] | None:
        gen = self.gen
        try:
            fitted = fit_prompt(self.backend, w.build, w.chunk.text, w.desired_max_tokens)
        except ContextOverflowError as exc:
            self._record(w, Outcome("failed", error_category="context_overflow", error_message=str(exc)), stats)
            return None
        request = GenerationRequest(
            key=w.item.key,
            messages=fitted.messages,
            max_tokens=fitted.max_tokens,
            temperature=gen.temperature,
            top_p=gen.top_p,
            seed=gen.seed + attempt,  # a retry samples differently; the key keeps the base seed
            prefix_messages=PREFIX_MESSAGES,
            stop_when=w.stop_when,
        )
        return request, fitted.trimmed

    def _blocked(self, w: WorkItem, request: GenerationRequest, stats: RunStats) -> bool:
        """The secret gate: a rendered request that still holds a secret is never sent; the
        item fails with category ``secret`` (whatever the templates placed in it)."""
        found = request_secrets(request, w.chunk.path)
        if not found:
            return False
        message = f"request not sent: {len(found)} secret(s) detected: " + "; ".join(found[:5])
        self.log.warning(f"{self.stage}: {w.label}: {message}")
        self._record(
            w, Outcome("failed", error_category="secret", error_message=message, max_tokens=request.max_tokens), stats
        )
        return True

    def _request_for(self, w: WorkItem, attempt: int, stats: RunStats) -> tuple[GenerationRequest, bool] | None:
        """``w``'s request for its ``attempt`` and whether its chunk was trimmed; None when it
        cannot be sent (the failure is recorded)."""
        fitted = self._fit(w, attempt, stats)
        if fitted is None or self._blocked(w, fitted[0], stats):
            return None
        stats.llm_requests += 1
        return fitted

    def _run_group(
        self,
        group: Sequence[WorkItem],
        entries: Mapping[str, LedgerEntry],
        lane: _Lane,
        ahead: _Ahead | None = None,
    ) -> None:
        """Send ``group``'s requests in one feed; an unusable reply's next samples (:meth:`_resend`)
        join the same feed, so a backend that reads it as it goes runs them in the batch it decodes;
        so does the later stage's work of each unit that settles (``ahead``).

        Replies are taken in seed order per item (:class:`_Samples`): with samples sent together,
        a later one's reply waits for the earlier one's, and is dropped once an earlier one is usable."""
        feed = RequestFeed()
        samples = _Samples()
        stats = lane.stats
        later = None if ahead is None else ahead.lane

        def send(to: _Lane, w: WorkItem, prepared: Sequence[tuple[GenerationRequest, bool]]) -> None:
            for request, trimmed in prepared:
                feed.add(request)
                samples.add(request.key, (to, w, trimmed, request.max_tokens))
            if not prepared and ahead is not None and not to.follow_on:
                ahead.settle(w.item.key)  # final: ok, failed with no sample left, or not sendable

        def first(to: _Lane, w: WorkItem, attempts: int) -> list[tuple[GenerationRequest, bool]]:
            prepared = to.runner._request_for(w, attempts, to.stats)
            return [] if prepared is None else [prepared]

        def send_ahead() -> None:
            nonlocal ahead, later
            if ahead is None or later is None:
                return
            try:
                out = sum(1 for sent in samples.sent.values() if sent[0].follow_on)
                for w in ahead.take(out):
                    send(later, w, first(later, w, _attempts(ahead.entries.get(w.item.key))))
            except Exception as exc:  # planning the later stage's work failed: that stage does it
                self.log.warning(f"{self.stage}: stopped sending {later.runner.stage} ahead: {exc}")
                ahead.release()
                ahead = later = None

        def take_in(result: GenerationResult) -> None:
            for (to, w, trimmed, max_tokens), reply in samples.arrived(result):
                key = w.item.key
                to.runner._handle(w, trimmed, max_tokens, reply, to.postprocess, to.stats)
                if _circuit_open(reply):
                    samples.drop_rest(key)  # never sent, not final: the next run sends it
                    continue
                out = samples.pending(key)  # later samples sent with this one
                if out and to.runner._samples_left(w, to.stats, out)[0]:
                    samples.taken_back[key] = to.runner._take_back_failure(w, to.stats)
                    continue  # the next sample's reply decides
                samples.drop_rest(key)  # usable, or failed for good: later samples are not needed
                again = [] if out else to.runner._resend(w, to.stats)
                if again:
                    samples.taken_back[key] = to.runner._take_back_failure(w, to.stats)
                    seeds = ", ".join(str(r.seed) for r, _ in again)
                    to.runner.log.info(f"{to.runner.stage}: {w.label}: unusable reply, next seed(s) {seeds}")
                send(to, w, again)
            send_ahead()

        for w in group:
            send(lane, w, first(lane, w, _attempts(entries.get(w.item.key))))
        send_ahead()
        started = time.monotonic()
        try:
            while len(feed):
                taken = feed.taken
                for result in self.backend.generate(feed):
                    if not samples.knows(result.key):
                        self.log.warning(f"{self.stage}: backend returned an unknown key {result.key!r}; ignored")
                        continue
                    take_in(result)
                    self._report_load()
                if feed.taken == taken:
                    break  # the backend took nothing: what it was given fails below
                send_ahead()  # what the cap held back
            self._take_back(feed, samples)
            self._fail_remaining(samples, "backend_error", "the backend returned no result for this request")
        except CircuitOpenError as exc:
            self._take_back(feed, samples)
            self._abandon(samples, "circuit_open", str(exc))
            raise
        except Exception as exc:  # a backend bug or crash: keep what finished, record the rest
            self._take_back(feed, samples)
            self._fail_remaining(samples, "backend_error", f"{type(exc).__name__}: {exc}")
            raise _BatchError(exc) from exc
        finally:
            elapsed = time.monotonic() - started
            stats.generate_seconds += elapsed
            if later is not None and later.stats.llm_requests:
                later.stats.generate_seconds += elapsed
            if ahead is not None:
                ahead.release()  # after the failures above are recorded: no other run takes them first

    @staticmethod
    def _take_back(feed: RequestFeed, samples: _Samples) -> None:
        """Requests still in ``feed`` when the backend stopped were never sent and use no attempt.
        An item whose earlier reply failed keeps that failure (in the counters and the viewer's
        list; the ledger already holds it); a later stage's first sample is left to that stage's
        run; this stage's first samples fail with the rest."""
        for request in feed.take():
            to, w, _, _ = samples.sent[request.key]
            key = w.item.key
            retry = request.key != key or key in samples.taken_back
            if not retry and not to.follow_on:
                continue
            samples.forget(request.key)
            to.stats.llm_requests -= 1
            if not retry:
                continue
            to.stats.retried -= 1
            to.stats.resent[key] -= 1
            category = samples.taken_back.get(key)
            if category is None or samples.pending(key):
                continue  # dropped (an earlier sample was usable), or an earlier sample is still out
            del samples.taken_back[key]
            message = f"{category}; its next sample was not sent: the backend stopped"
            to.runner._count_failure(w, to.stats, category, message)

    def _report_load(self, every_seconds: float = 1.0) -> None:
        """Store the backend's concurrency limit and latency for the live displays (OpenAI backend)."""
        load_status = getattr(self.backend, "load_status", None)
        now = time.monotonic()
        if load_status is None or now - self._load_reported < every_seconds:
            return
        self._load_reported = now
        write_llm_load(self.state, self.repo, self.stage, load_status())

    def _handle(
        self,
        w: WorkItem,
        trimmed: bool,
        max_tokens: int,
        result: GenerationResult,
        postprocess: Postprocess,
        stats: RunStats,
    ) -> None:
        stats.prompt_tokens += result.prompt_tokens
        stats.cached_prompt_tokens += result.cached_prompt_tokens
        stats.completion_tokens += result.completion_tokens
        if trimmed:
            stats.trimmed += 1
        if result.error is not None and _circuit_open(result):
            # Never sent: not an attempt. Shown to the viewer, not written to the ledger.
            stats.failures["circuit_open"] += 1
            self.state.record_failure(self.repo, self.stage, w.label, "circuit_open", result.error.message)
            return
        if result.error is not None:
            outcome = Outcome(
                "failed",
                output=result.text or None,
                error_category=result.error.category,
                error_message=result.error.message,
                uses_attempt=not is_outage(result.error.category, result.error.status_code),
            )
        else:
            outcome = postprocess(w, result)
        outcome = dataclasses.replace(
            outcome,
            prompt_tokens=result.prompt_tokens,
            cached_prompt_tokens=result.cached_prompt_tokens,
            completion_tokens=result.completion_tokens,
            latency_ms=result.latency_ms,
            trimmed=trimmed,
            max_tokens=max_tokens,
            finish_reason=result.finish_reason or None,
            seed_sent=_seed_sent(result.extra),
        )
        self._record(w, outcome, stats)

    def _record(self, w: WorkItem, outcome: Outcome, stats: RunStats) -> None:
        self.ledger.record(w.item, outcome)
        if outcome.status == "ok":
            stats.failed_keys.pop(w.item.key, None)
            stats.generated += 1
            self.state.advance(self.repo, self.stage, done=1)
        else:
            category = outcome.error_category or "backend_error"
            self._count_failure(w, stats, category, outcome.error_message or category)

    def _count_failure(self, w: WorkItem, stats: RunStats, category: str, message: str) -> None:
        """``w`` failed with ``category`` (counters, progress and the viewer's list; the inverse
        of :meth:`_take_back_failure`)."""
        stats.failed += 1
        stats.failed_keys[w.item.key] = category
        stats.failures[category] += 1
        self.state.advance(self.repo, self.stage, done=0, failed=1)
        self.state.record_failure(self.repo, self.stage, w.label, category, message)

    @staticmethod
    def _fail_remaining(samples: _Samples, category: str, message: str) -> None:
        """Record the failure of each item with a sample sent and no reply taken in (once per item:
        its earliest such sample; later ones are not needed)."""
        for to, w, trimmed, max_tokens in samples.unanswered():
            outcome = Outcome(
                "failed", error_category=category, error_message=message, trimmed=trimmed, max_tokens=max_tokens
            )
            to.runner._record(w, outcome, to.stats)

    @staticmethod
    def _abandon(samples: _Samples, category: str, message: str) -> None:
        for to, w, _, _ in samples.unanswered():
            to.stats.failures[category] += 1
            to.runner.state.record_failure(to.runner.repo, to.runner.stage, w.label, category, message)


class _Samples:
    """The samples of one feed: each request sent (by request key), each item's samples in seed
    order until their replies are taken in, replies that came before an earlier sample's, and
    samples whose replies are no longer needed."""

    def __init__(self) -> None:
        self.sent: dict[str, _Sent] = {}
        self.order: dict[str, list[str]] = {}
        self.early: dict[str, GenerationResult] = {}
        self.dropped: set[str] = set()
        self.taken_back: dict[str, str] = {}
        """Items whose last failure was taken back because another sample is coming, and its category."""

    def add(self, request_key: str, sent: _Sent) -> None:
        """A request of ``sent``'s item, after any sent before it."""
        self.sent[request_key] = sent
        self.order.setdefault(sent[1].item.key, []).append(request_key)

    def knows(self, request_key: str) -> bool:
        """Whether ``request_key`` is a request of this feed still awaiting its reply."""
        return request_key in self.sent and request_key not in self.early

    def pending(self, item_key: str) -> int:
        """How many samples of the item are sent and their replies not taken in yet."""
        return len(self.order.get(item_key, ()))

    def arrived(self, result: GenerationResult) -> Iterator[tuple[_Sent, GenerationResult]]:
        """The replies to take in now, in seed order, after ``result`` arrived (none while an
        earlier sample of its item is out; none for a dropped sample)."""
        if result.key in self.dropped:
            self.forget(result.key)
            return
        item = self.sent[result.key][1].item.key
        self.early[result.key] = result
        order = self.order[item]
        while order and order[0] in self.early:
            request_key = order.pop(0)
            reply = self.early.pop(request_key)
            sent = self.sent.pop(request_key)
            yield sent, dataclasses.replace(reply, key=item)

    def drop_rest(self, item_key: str) -> None:
        """The item's later samples are not needed: their replies are ignored."""
        for request_key in self.order.pop(item_key, []):
            if request_key in self.early:
                del self.early[request_key]
                self.sent.pop(request_key, None)
            else:
                self.dropped.add(request_key)
        self.taken_back.pop(item_key, None)

    def forget(self, request_key: str) -> None:
        """A request that will get no reply to take in (never sent, or dropped)."""
        sent = self.sent.pop(request_key, None)
        self.dropped.discard(request_key)
        self.early.pop(request_key, None)
        if sent is not None:
            order = self.order.get(sent[1].item.key, [])
            if request_key in order:
                order.remove(request_key)

    def unanswered(self) -> list[_Sent]:
        """Each item with a sample out and no reply taken in, once (its earliest sample); the
        item's samples are cleared."""
        found = []
        for item_key, order in list(self.order.items()):
            live = [k for k in order if k in self.sent]
            if live:
                found.append(self.sent[live[0]])
            for request_key in live:
                self.forget(request_key)
            self.order.pop(item_key, None)
        self.sent = {k: v for k, v in self.sent.items() if k in self.dropped}
        return found


class IncompleteStageError(CicdllmError):
    """A stage run ended with items that have neither a result nor a recorded failure."""


class _BatchError(CicdllmError):
    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _attempts(entry: LedgerEntry | None) -> int:
    """Attempts an item has used (0 when the ledger has no row for it)."""
    return entry.attempts if entry is not None else 0


def _circuit_open(result: GenerationResult) -> bool:
    """A reply the backend never sent the request for: its circuit breaker is open."""
    return result.error is not None and result.error.category == "circuit_open"


def _seed_sent(extra: Mapping[str, object]) -> bool | None:
    """Whether the backend sent a sampling seed with the request (provenance), if it says."""
    value = extra.get("seed_sent")
    return value if isinstance(value, bool) else None
