"""The LLM judge (``quality.judge``): verdict parsing, threshold filtering, the ledger (resume,
retries, no-op re-runs counted at the server), the secret gate, export columns and card.

Generation runs against one loopback OpenAI server (the fault server's default answers);
the judge against a second one, its own backend (``quality.judge.llm``), scripted per pair
with good, messy, low and out-of-range verdicts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance
from matplotlib.image import imread

from benchmarks.fault_server import FaultServer, default_responder
from cicdllm_assets.config import Settings, load_settings
from cicdllm_assets.generation.chunks import Chunk
from cicdllm_assets.generation.engine import StageRunner
from cicdllm_assets.generation.judge import (
    JUDGE_LOW,
    JUDGE_UNSCORED,
    JudgeParseError,
    Verdict,
    judge_postprocess,
    judge_sampling,
    parse_verdict,
    plan_judgements,
)
from cicdllm_assets.generation.ledger import Ledger
from cicdllm_assets.llm.tokenizer_counter import TokenCounter
from cicdllm_assets.resources.llm.openai_resource import OpenAIResource
from cicdllm_assets.storage.state import StateStore
from tests.generation_support import (
    REPO_ROOT,
    SAMPLE_FILES,
    chunk_rows,
    ledger_of,
    materialization_values,
    openai_config,
    read_table,
    run_generation,
    write_chunks,
)
from tests.judge_support import (
    JUDGE_MODEL,
    KINDS,
    add_judge_config,
    good_judge,
    openai_judge,
    run_qa_pairs,
    scripted_judge,
    verdict_kind,
)
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture
from tests.openai_helpers import make_backend

REPO = "acme-judge"


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Correctness: 4\nGroundedness: 5\nUsefulness: 3\nRationale: Accurate.", (4, 5, 3, "Accurate.")),
        (
            'Sure! Here it is:\n```json\n{"Correctness": 4, "groundedness": "5", "usefulness": 3.0,'
            ' "reason": "Accurate and\\n grounded."}\n```\nHope this helps!',
            (4, 5, 3, "Accurate and grounded."),
        ),
        (
            "**Correctness:** 4/5\n**Groundedness:** 5 out of 5\n- **Usefulness** (1-5): 2\n\n**Rationale:**\n"
            "Names `add` correctly.",
            (4, 5, 2, "Names `add` correctly."),
        ),
        (
            "1. Correctness - 2\n2. Grounded = 1\n3. Useful: 3\nThe answer invents a cache.",
            (2, 1, 3, "The answer invents a cache."),
        ),
        (
            '{"correctness": 1, "groundedness": 1, "usefulness": 1, "rationale": "' + "x" * 400 + '"}',
            (1, 1, 1, "x" * 299 + "…"),
        ),
    ],
)  # fmt: skip
def test_parse_messy_verdicts(reply: str, expected: tuple[int, int, int, str]) -> None:
    assert parse_verdict(reply) == Verdict(*expected)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("", "empty reply"),
        ("This answer looks fine to me.", "no scores found"),
        ("Correctness: 6\nGroundedness: 5\nUsefulness: 3\nRationale: x", "correctness score 6 is outside 1-5"),
        ("Correctness: 4\nGroundedness: 0\nUsefulness: 3\nRationale: x", "groundedness score 0 is outside 1-5"),
        ("Correctness: 8/10\nGroundedness: 5\nUsefulness: 3\nRationale: x", "correctness score 8/10 is not on the 1-5"),
        ("Correctness: 3.5\nGroundedness: 5\nUsefulness: 3\nRationale: x", "score 3.5 is not a whole number"),
        ("Correctness: 4\nUsefulness: 3\nRationale: x", "no groundedness score found"),
        ("Correctness: 4\nGroundedness: 4\nUsefulness: 3", "no rationale found"),
        ("Correctness: 1\nGroundedness: 1\nUsefulness: 1\nRationale: 1", "no rationale found"),
        ('{"correctness": 4, "groundedness": 4, "usefulness": 3, "rationale": "-"}', "JSON verdict has no rationale"),
        ("Correctness: <1-5>\nGroundedness: <1-5>\nUsefulness: <1-5>\nRationale: <one sentence>", "no scores found"),
        (
            '```json\n{"correctness": 4, "groundedness": 4, "usefulness": "high", "rationale": "r"}\n```',
            "usefulness score 'high' is not a number",
        ),
        ('{"correctness": 4, "usefulness": 3, "rationale": "r"}', "the JSON verdict has no groundedness score"),
    ],
)  # fmt: skip
def test_unusable_verdicts_fail_clearly(reply: str, message: str) -> None:
    with pytest.raises(JudgeParseError, match=message):
        parse_verdict(reply)


# ---------------------------------------------------------------------------- pipeline


def _generate(project: Path, server: FaultServer, tokenizer: Path) -> int:
    """Questions and answers for REPO from the generation server; returns the answer count."""
    settings = openai_config(
        project, server.base_url, tokenizer, generation={"themes": ["code_explanation"], "questions_per_chunk": 2}
    )
    write_chunks(settings, REPO, chunk_rows(REPO, SAMPLE_FILES))
    assert run_generation(REPO, OpenAIResource(), instance=DagsterInstance.get()).success
    return read_table(settings, "answers", REPO).num_rows


@pytest.mark.slow
def test_judge_scores_filters_retries_and_exports(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    with FaultServer() as gen, FaultServer(responder=scripted_judge, model=JUDGE_MODEL) as judge:
        _generate(project, gen, tiny_model_dir)
        add_judge_config(project, openai_judge(judge.base_url, tiny_model_dir, threshold=3, max_attempts=2))
        settings = load_settings()
        instance = DagsterInstance.get()
        generated = len(gen.chat_records)

        result = run_qa_pairs(REPO, instance)
        assert len(gen.chat_records) == generated  # the judge has its own backend
        rows = read_table(settings, "qa_pairs", REPO).to_pylist()
        judged = [r for r in rows if r["reject_reason"] in (None, JUDGE_LOW, JUDGE_UNSCORED)]
        kinds = Counter(verdict_kind(r["question"]) for r in judged)
        assert set(kinds) == set(KINDS), kinds  # every scripted verdict occurs
        assert len(judge.chat_records) == len(judged)  # one request per pair the filters accepted
        assert {r.body["model"] for r in judge.chat_records if r.body} == {JUDGE_MODEL}

        by_kind = {kind: [r for r in judged if verdict_kind(r["question"]) == kind] for kind in KINDS}
        for row in by_kind["good_json"]:
            assert row["accepted"] and row["reject_reason"] is None
            assert (row["judge_correctness"], row["judge_groundedness"], row["judge_usefulness"]) == (5, 5, 4)
            assert row["judge_rationale"] == "Matches the code exactly." and row["judge_model"] == JUDGE_MODEL
        for row in by_kind["good_lines"]:
            assert row["accepted"]
            assert (row["judge_correctness"], row["judge_groundedness"], row["judge_usefulness"]) == (4, 4, 3)
        for row in by_kind["low"]:
            assert not row["accepted"] and row["reject_reason"] == JUDGE_LOW
            assert row["reject_detail"] == ("groundedness 1 < threshold 3: It invents a cache the code does not have.")
            assert row["judge_groundedness"] == 1  # scores of rejected pairs stay visible
        for row in by_kind["bad"]:
            assert not row["accepted"] and row["reject_reason"] == JUDGE_UNSCORED
            assert "correctness score 7 is outside 1-5" in row["reject_detail"]
            assert row["judge_correctness"] is None
        for row in rows:
            if row not in judged:
                assert row["judge_correctness"] is None  # rejected by a filter: never judged
        metadata = materialization_values(result, "qa_pairs")
        assert metadata["rejections"][JUDGE_LOW] == len(by_kind["low"])
        assert metadata["judge_scored"] == len(judged) - len(by_kind["bad"])
        assert metadata["judge_llm_requests"] == len(judged)
        assert "| 5 | " in metadata["judge_scores"]

        failed = [e for e in ledger_of(settings).entries(kind="judge") if e.status != "ok"]
        assert len(failed) == len(by_kind["bad"]) and all(e.attempts == 1 for e in failed)
        assert all(e.error_category == "parse_error" and "Correctness: 7" in (e.output or "") for e in failed)

        # the second run retries only the unparseable verdicts (max_attempts 2) ...
        before = len(judge.chat_records)
        run_qa_pairs(REPO, instance)
        assert len(judge.chat_records) - before == len(by_kind["bad"])
        assert all(e.attempts == 2 for e in ledger_of(settings).entries(kind="judge") if e.status != "ok")
        # ... the third sends nothing
        before = len(judge.chat_records)
        result = run_qa_pairs(REPO, instance)
        assert len(judge.chat_records) == before
        assert materialization_values(result, "qa_pairs")["judge_llm_requests"] == 0

        # a lower threshold re-filters from the ledger: no request, the low pairs come back
        add_judge_config(project, openai_judge(judge.base_url, tiny_model_dir, threshold=1, max_attempts=2))
        result = run_qa_pairs(REPO, instance, with_export=True)
        assert len(judge.chat_records) == before
        assert result.success and all(c.passed for c in result.get_asset_check_evaluations())
        rows = read_table(settings, "qa_pairs", REPO).to_pylist()
        low_ids = {r["answer_id"] for r in by_kind["low"]}
        assert [r["accepted"] for r in rows if r["answer_id"] in low_ids] == [True] * len(low_ids)

        # the export carries the scores as columns (parquet, jsonl, csv) and the card shows them
        out = settings.export_dir
        exported = pq.read_table(out / "dataset.parquet").to_pylist()
        scored = {r["id"]: r for r in exported if r["judge_correctness"] is not None}
        expected_ids = {r["answer_id"] for kind in ("good_json", "good_lines", "low") for r in by_kind[kind]}
        assert set(scored) <= expected_ids and scored  # some may drop as cross-repo/near duplicates
        assert all(r["judge_model"] == JUDGE_MODEL and r["judge_rationale"] for r in scored.values())
        lines = [json.loads(line) for line in (out / "dataset.jsonl").read_text(encoding="utf-8").splitlines()]
        assert {r["id"]: r["judge_usefulness"] for r in lines} == {r["id"]: r["judge_usefulness"] for r in exported}
        header = (out / "dataset.csv").read_text(encoding="utf-8").splitlines()[0]
        assert header.endswith(
            '"judge_correctness","judge_groundedness","judge_usefulness","judge_rationale","judge_model"'
        )
        card = (out / "README.md").read_text(encoding="utf-8")
        n_scored = len(judged) - len(by_kind["bad"])
        assert f"{n_scored} pairs were scored 1-5 by `{JUDGE_MODEL}`" in card
        assert f"{len(by_kind['bad'])} as `{JUDGE_UNSCORED}`" in card
        assert "![Judge scores](plots/judge_scores.png)" in card
        image = imread(out / "plots" / "judge_scores.png")
        assert image.shape[0] > 100 and image.shape[1] > 100
        counts = Counter(r["judge_correctness"] for r in judged if r["judge_correctness"] is not None)
        assert f"| 5 | {counts[5]} |" in card and f"| 2 | {counts[2]} |" in card


@pytest.mark.slow
def test_judge_sampling_resends_unparseable_verdicts_in_the_run(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    """At ``quality.judge.temperature`` > 0 a verdict that does not parse is sent again in the same
    run (``generation.retries_in_run``), up to the judge's ``max_attempts``; at 0 (the test above) not."""
    with FaultServer() as gen, FaultServer(responder=scripted_judge, model=JUDGE_MODEL) as judge:
        _generate(project, gen, tiny_model_dir)
        add_judge_config(project, openai_judge(judge.base_url, tiny_model_dir, temperature=0.5, max_attempts=3))
        settings = load_settings()
        run_qa_pairs(REPO, DagsterInstance.get())
        rows = read_table(settings, "qa_pairs", REPO).to_pylist()
        judged = [r for r in rows if r["reject_reason"] in (None, JUDGE_LOW, JUDGE_UNSCORED)]
        bad = [r for r in judged if verdict_kind(r["question"]) == "bad"]
        assert bad and all(r["reject_reason"] == JUDGE_UNSCORED for r in bad)  # scripted: never parses
        # every unparseable verdict used its three attempts in this one run
        assert len(judge.chat_records) == len(judged) + 2 * len(bad)
        failed = [e for e in ledger_of(settings).entries(kind="judge") if e.status != "ok"]
        assert len(failed) == len(bad) and all(e.attempts == 3 for e in failed)


@pytest.mark.slow
def test_judge_resumes_after_sigkill(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    with FaultServer() as gen, FaultServer(responder=good_judge, model=JUDGE_MODEL, capacity=1) as judge:
        _generate(project, gen, tiny_model_dir)
        judge_cfg = openai_judge(judge.base_url, tiny_model_dir)
        judge_cfg["llm"]["openai"]["max_concurrency"] = 1
        add_judge_config(project, judge_cfg)
        settings = load_settings()
        instance = DagsterInstance.get()
        judge.latency = 0.4
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.judge_worker", REPO],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ledger = ledger_of(settings)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if ledger.counts(kind="judge").get("ok", 0) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the worker finished before it could be killed; slow the judge down"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        killed_at = ledger.counts(kind="judge").get("ok", 0)
        sent_before = len(judge.chat_records)

        judge.latency = 0.0
        run_qa_pairs(REPO, instance)
        rows = read_table(settings, "qa_pairs", REPO).to_pylist()
        scored = [r for r in rows if r["judge_correctness"] is not None]
        assert killed_at < len(scored)
        assert len(judge.chat_records) - sent_before == len(scored) - killed_at  # only the missing verdicts
        entries = ledger_of(settings).entries(kind="judge")
        assert len(entries) == len(scored) and all(e.status == "ok" and e.attempts == 1 for e in entries)
        assert {e.input_text for e in entries} == {r["answer_id"] for r in scored}
        assert all(r["accepted"] for r in scored)


def test_secret_gate_blocks_judge_requests(settings: Settings, tiny_model_dir: Path) -> None:  # noqa: F811
    stripe = "sk_live_" + "Vb8Nq3Lx7Rt2Wz5Km9Hp4Jd6"  # fake, in Stripe's format
    chunk = Chunk("acme/app", "c1", "calc.py", 1, 2, "def add(a, b):\n    return a + b\n", "python", "add")
    rows = [
        {"accepted": True, "chunk_key": "c1", "theme": "t", "answer_id": "a1", "question": "What does `add` do?",
         "answer": "`add` returns the sum of `a` and `b`."},
        {"accepted": True, "chunk_key": "c1", "theme": "t", "answer_id": "a2", "question": "How is `add` called?",
         "answer": f"Call `add(1, 2)` with the key {stripe} set."},
    ]  # fmt: skip
    with FaultServer(responder=good_judge) as server:
        backend = make_backend(server.base_url, model=JUDGE_MODEL, token_counter=TokenCounter(tiny_model_dir))
        state = StateStore(settings.state_target)
        try:
            ledger = Ledger(state)
            cfg = settings.config.quality.judge
            work = plan_judgements(rows, {"c1": chunk}, backend.model_id, cfg, "acme/app")
            runner = StageRunner(
                backend=backend, ledger=ledger, state=state, repo="acme/app", stage="judge",
                generation=judge_sampling(settings.config.quality.judge, settings.config.generation),
                performance=settings.config.performance,
            )  # fmt: skip
            stats = runner.run([w.work for w in work], judge_postprocess)
            entries = ledger.get_many(w.work.item.key for w in work)
        finally:
            backend.close()
            state.close()
        assert len(server.chat_records) == 1 and stripe not in server.chat_records[0].prompt_text
        assert stats.failures == Counter({"secret": 1})
        by_answer = {e.input_text: e for e in entries.values()}
        assert by_answer["a1"].ok and by_answer["a2"].error_category == "secret"


@pytest.mark.slow
def test_in_process_mlx_judge(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    """The real mlx-lm path judges (a tiny random model: its verdicts rarely parse, the path must run)."""
    with FaultServer() as gen:
        _generate(project, gen, tiny_model_dir)
        judge = {"max_attempts": 1, "max_tokens": 24, "keep_unscored": True}
        add_judge_config(project, {"enabled": True, **judge, "llm": {"backend": "mlx", "model": str(tiny_model_dir)}})
        settings = load_settings()
        instance = DagsterInstance.get()
        result = run_qa_pairs(REPO, instance)
        rows = read_table(settings, "qa_pairs", REPO).to_pylist()
        judged = [r for r in rows if r["accepted"]]  # keep_unscored: the filters' verdict stands
        entries = ledger_of(settings).entries(kind="judge")
        assert judged and len(entries) == len(judged)
        assert {e.input_text for e in entries} == {r["answer_id"] for r in judged}
        assert all(e.model_id.startswith("mlx:") and e.completion_tokens > 0 for e in entries)
        assert all(e.ok or e.error_category == "parse_error" for e in entries)
        scored = {e.input_text for e in entries if e.ok}
        assert {r["answer_id"] for r in judged if r["judge_correctness"] is not None} == scored
        assert materialization_values(result, "qa_pairs")["judge_llm_requests"] == len(entries)

        result = run_qa_pairs(REPO, instance)  # every item settled (max_attempts 1): nothing to send
        assert materialization_values(result, "qa_pairs")["judge_llm_requests"] == 0
        assert ledger_of(settings).entries(kind="judge") == entries


def _generation_or_judge(body: dict[str, Any]) -> str:
    """One server for both: verdicts for judge prompts, the default replies otherwise."""
    if "Score the answer" in str(body["messages"][-1]["content"]):
        return good_judge(body)
    return default_responder(body)


@pytest.mark.slow
def test_same_backend_judges_with_the_generation_model(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    with FaultServer(responder=_generation_or_judge) as server:
        _generate(project, server, tiny_model_dir)
        add_judge_config(project, {"enabled": True, "llm": {"backend": "same"}})
        settings = load_settings()
        before = len(server.chat_records)
        run_qa_pairs(REPO, DagsterInstance.get())
        judged = [r for r in read_table(settings, "qa_pairs", REPO).to_pylist() if r["accepted"]]
        assert judged and len(server.chat_records) - before == len(judged)
        assert {r.body["model"] for r in server.chat_records[before:] if r.body} == {"fake-model"}
        assert {(r["judge_model"], r["judge_correctness"]) for r in judged} == {("fake-model", 4)}
