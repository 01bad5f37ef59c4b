"""Per-item claims (leases) on SQLite and Postgres state: no item is requested twice by
concurrent runs, and a dead holder's items are picked up once its lease expires."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.fault_server import FaultServer
from cicdllm_assets.config import Settings
from cicdllm_assets.generation.chunks import select_chunks
from cicdllm_assets.generation.engine import StageRunner
from cicdllm_assets.generation.leases import LEASES_TABLE, Leases
from cicdllm_assets.generation.ledger import Ledger
from cicdllm_assets.generation.prompts import PromptManager
from cicdllm_assets.generation.questions_stage import plan_questions, question_postprocess
from cicdllm_assets.storage.state import StateStore
from tests.generation_support import (
    PROMPTS_SRC,
    SAMPLE_FILES,
    ScriptedBackend,
    chunk_rows,
    openai_config,
    write_project_config,
)
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture

BIN = Path(sys.executable).parent


def test_claims_are_exclusive_until_released_or_expired(state_target: str | Path) -> None:
    with StateStore(state_target) as state:
        a = Leases(state, ttl_seconds=60, holder="a")
        b = Leases(state, ttl_seconds=60, holder="b")
        assert a.claim(["k1", "k2"]) == {"k1", "k2"}
        assert b.claim(["k1", "k2", "k3"]) == {"k3"}  # a holds k1, k2
        assert a.claim(["k1"]) == {"k1"}  # re-claiming our own lease is fine
        a.release(["k1"])
        assert b.claim(["k1", "k2"]) == {"k1"}
        with state.transaction() as con:  # a dies: its lease of k2 runs out
            con.execute(f"UPDATE {LEASES_TABLE} SET expires_at = ? WHERE holder = 'a'", (time.time() - 1,))  # noqa: S608
        assert b.claim(["k2"]) == {"k2"}
        b.release_all()
        assert state.query(f"SELECT COUNT(*) FROM {LEASES_TABLE}")[0][0] == 0  # noqa: S608


def test_a_live_holder_keeps_its_leases_past_the_ttl(state_target: str | Path) -> None:
    with StateStore(state_target) as state, Leases(state, ttl_seconds=1.0, holder="live") as live:
        assert live.claim(["k"]) == {"k"}
        time.sleep(2.5)  # > 2 ttl: only the renewal thread keeps it
        assert Leases(state, ttl_seconds=1.0, holder="other").claim(["k"]) == set()
    with StateStore(state_target) as state:  # released on exit
        assert Leases(state, ttl_seconds=1.0, holder="other").claim(["k"]) == {"k"}


def _runner(backend: ScriptedBackend, state: StateStore, settings: Settings) -> StageRunner:
    return StageRunner(
        backend=backend,
        ledger=Ledger(state),
        state=state,
        generation=settings.config.generation,
        performance=settings.config.performance,
        repo="repo",
        stage="questions",
        pause_hook=lambda: None,
    )


def _work(settings: Settings) -> list:
    chunks = select_chunks(chunk_rows("repo", SAMPLE_FILES), None)
    themes = [PromptManager(PROMPTS_SRC).theme("testing")]
    return plan_questions(chunks, themes, "scripted", settings.config.generation, "repo")


def test_runner_waits_for_a_held_item_and_takes_it_over_after_expiry(
    state_target: str | Path, settings: Settings
) -> None:
    work = _work(settings)
    held = work[0].item.key
    with StateStore(state_target) as state:
        dead = Leases(state, ttl_seconds=2.0, holder="dead-process")
        assert dead.claim([held]) == {held}  # never renewed, never released: a SIGKILLed holder
        backend = ScriptedBackend()
        started = time.monotonic()
        stats = _runner(backend, state, settings).run(work, question_postprocess(settings.config.generation))
        waited = time.monotonic() - started
        assert sorted(r.key for r in backend.calls) == sorted(w.item.key for w in work)  # each once
        assert backend.calls[-1].key == held  # the held item was sent last, after the lease expired
        assert waited >= 1.5
        assert stats.generated == len(work) and Ledger(state).counts() == {"ok": len(work)}


def test_runner_reads_an_item_another_holder_finished(state_target: str | Path, settings: Settings) -> None:
    work = _work(settings)
    gen = settings.config.generation
    with StateStore(state_target) as state:
        other = Leases(state, ttl_seconds=60, holder="other-run")
        assert other.claim([work[0].item.key]) == {work[0].item.key}

        def finish_elsewhere() -> None:  # the other run records its result, then releases
            time.sleep(1.0)
            with StateStore(state_target) as mine:
                _runner(ScriptedBackend(), mine, settings)._record(
                    work[0], question_postprocess(gen)(work[0], _reply(work[0].item.key)), _stats()
                )
                Leases(mine, ttl_seconds=60, holder="other-run").release_all()

        thread = threading.Thread(target=finish_elsewhere)
        thread.start()
        backend = ScriptedBackend()
        stats = _runner(backend, state, settings).run(work, question_postprocess(gen))
        thread.join()
        assert work[0].item.key not in {r.key for r in backend.calls}  # never sent here
        assert len(backend.calls) == len(work) - 1
        assert stats.reused == 1 and stats.generated == len(work) - 1


def test_a_run_never_ends_with_items_that_have_no_result_and_no_failure(
    state_target: str | Path, settings: Settings
) -> None:
    """A backend that answers ``circuit_open`` per item without raising leaves those items with no
    ledger row and no counted failure: the run raises instead of returning (its step would
    otherwise succeed and write a table without them)."""
    from cicdllm_assets.llm.base import CircuitOpenError

    work = _work(settings)
    with StateStore(state_target) as state:
        backend = ScriptedBackend(fail={"": "circuit_open"})
        with pytest.raises(CircuitOpenError, match=f"{len(work)} of {len(work)} items have no result"):
            _runner(backend, state, settings).run(work, question_postprocess(settings.config.generation))
        assert Ledger(state).counts() == {}
        stats = _runner(ScriptedBackend(), state, settings).run(work, question_postprocess(settings.config.generation))
        assert (stats.generated, stats.missing) == (len(work), 0)


def _reply(key: str):
    from cicdllm_assets.llm.base import GenerationResult

    return GenerationResult(key, text='["What does this code compute exactly?"]')


def _stats():
    from cicdllm_assets.generation.engine import RunStats

    return RunStats()


def _sections(project: Path) -> dict:
    from ruamel.yaml import YAML

    return dict(YAML(typ="safe").load((project / "cicdllm.yaml").read_text(encoding="utf-8")))


def _stage_started_after(target: str | Path, repo: str, stage: str, after: float) -> bool:
    try:
        with StateStore(target, readonly=True) as state:
            rows = [p for p in state.progress(repo) if p.stage == stage]
    except Exception:  # not created yet
        return False
    return bool(rows) and rows[0].started_at > after


@pytest.mark.slow
def test_two_cicdllm_runs_on_the_same_repos_send_each_request_once(
    state_target: str | Path,
    project: Path,
    make_git_repo,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    """Two `cicdllm run` processes at once: no lock error, nothing lost or duplicated, and every
    item's request reaches the server exactly once.

    The server holds every request until the second process has started its own questions
    stage, so both provably plan the same missing items while the first has them in flight.
    """
    from dagster import DagsterInstance

    from benchmarks.fault_server import default_responder
    from cicdllm_assets.runner.instance import ensure_dagster_home

    gate = threading.Event()

    def gated(body: dict) -> str:
        gate.wait(timeout=300)
        return default_responder(body)

    with FaultServer(capacity=16, responder=gated) as server:
        settings = openai_config(
            project,
            server.base_url,
            tiny_model_dir,
            generation={"themes": ["code_explanation", "testing"], "questions_per_chunk": 1},
            openai={"max_concurrency": 2, "timeout_seconds": 300.0},  # held requests must not time out
        )
        # Two generation steps at once (the instance's pool `llm` would otherwise make the
        # second run wait for the first's step): only the leases keep the items apart.
        write_project_config(project, **{**_sections(project), "performance": {"llm_pool_limit": 2}})
        repos = [
            make_git_repo(name, {f"{name}/m{i}.py": f"def {name}_{i}(x):\n    return x + {i}\n" for i in range(3)})
            for name in ("alpha", "beta")
        ]
        (project / "repos.txt").write_text("".join(f"{r.path}\n" for r in repos), encoding="utf-8")
        ensure_dagster_home(settings)
        DagsterInstance.get().dispose()  # the instance's storage exists before two processes open it
        env = {
            **os.environ,
            "CICDLLM_CONFIG": str(project / "cicdllm.yaml"),
            "DAGSTER_HOME": str(project / "dagster_home"),
        }

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [str(BIN / "cicdllm"), "run", "--json"],
                cwd=project,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )

        procs = [start()]
        deadline = time.monotonic() + 300
        while not server.chat_records:  # the first process is generating (and held at the server)
            assert procs[0].poll() is None and time.monotonic() < deadline, procs[0].communicate()[1][-3000:]
            time.sleep(0.2)
        second_at = time.time()
        procs.append(start())
        while not _stage_started_after(settings.state_target, "local-alpha", "questions", second_at):
            assert procs[1].poll() is None and time.monotonic() < deadline, procs[1].communicate()[1][-3000:]
            time.sleep(0.2)
        time.sleep(2.0)  # the second process has planned and claimed (or waits on the first's leases)
        gate.set()
        outputs = [proc.communicate(timeout=600) for proc in procs]
        for proc, (out, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, err.decode(errors="replace")[-4000:]
            assert b"locked" not in err.lower(), err.decode(errors="replace")[-4000:]
            summary = json.loads(out)
            assert summary["ok"] and {r["status"] for r in summary["repos"]} == {"done"}, summary
        prompts = Counter(json.dumps(r.body["messages"], sort_keys=True) for r in server.chat_records)

    assert prompts and max(prompts.values()) == 1, [n for n in prompts.values() if n > 1]
    with StateStore(settings.state_target) as state:
        ledger = Ledger(state)
        entries = ledger.entries()
        assert len(entries) == len(prompts)  # one request per ledger item, nothing lost
        assert {e.status for e in entries} == {"ok"}
        assert {e.attempts for e in entries} == {1}
        assert ledger.counts(kind="question")["ok"] == 2 * 3 * 2  # repos x chunks x themes
