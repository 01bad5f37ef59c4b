"""questions/answers through Dagster against a real OpenAI-compatible server (fault server over HTTP).

Requests are counted at the server, so "zero LLM calls" means zero HTTP requests.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from benchmarks.fault_server import Fault, FaultServer
from cicdllm_assets.resources.llm.openai_resource import OpenAIResource
from tests.generation_support import (
    SAMPLE_FILES,
    chain_assets,
    chain_project,
    chain_resources,
    chunk_rows,
    ledger_of,
    openai_config,
    read_table,
    run_generation,
    write_chunks,
)
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture

REPO = "acme-calc"


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(capacity=8) as srv:
        yield srv


def _chat_count(server: FaultServer) -> int:
    return len(server.chat_records)


def test_noop_rerun_makes_zero_llm_calls(project: Path, server: FaultServer, tiny_model_dir: Path) -> None:  # noqa: F811
    settings = openai_config(project, server.base_url, tiny_model_dir)
    rows = chunk_rows(REPO, SAMPLE_FILES)
    write_chunks(settings, REPO, rows)
    instance = DagsterInstance.ephemeral()

    result = run_generation(REPO, OpenAIResource(), instance=instance)
    assert result.success
    n_chunks, n_themes, n_q = len(rows), 2, 2
    first_calls = _chat_count(server)
    assert first_calls == n_chunks * n_themes + n_chunks * n_themes * n_q  # question items + answers

    questions = read_table(settings, "questions", REPO)
    answers = read_table(settings, "answers", REPO)
    assert questions.num_rows == n_chunks * n_themes * n_q
    assert answers.num_rows == questions.num_rows
    assert len(set(answers.column("answer_id").to_pylist())) == answers.num_rows
    row = answers.to_pylist()[0]
    for column in (
        "repo",
        "commit",
        "path",
        "start_line",
        "end_line",
        "model_id",
        "template_hash",
        "params",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "trimmed",
        "license",
        "question_id",
    ):
        assert row[column] is not None, column
    assert row["model_id"] == "fake-model" and row["commit"] == "c0ffee"
    assert row["finish_reason"] == "stop" and row["max_tokens"] == 256

    # message layout: system, user(code), user(instruction); the code is in message 2 only
    body = server.chat_records[0].body or {}
    # provenance records whether a seed went with the request (auto: this server kind gets one)
    assert "seed" in body and row["seed_sent"] is True
    assert set(questions.column("seed_sent").to_pylist()) == {True}
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "user"]
    assert "```python" in body["messages"][1]["content"]

    # materialization metadata: each chunk's answers were sent in the questions step's batch as
    # soon as its questions were final (generation.answers_ahead); the answers step reused them
    ahead = result.asset_materializations_for_node("questions")[0].metadata["answers_ahead"].value
    meta = result.asset_materializations_for_node("answers")[0].metadata
    assert (ahead, meta["generated"].value, meta["reused"].value) == (answers.num_rows, 0, answers.num_rows)

    result = run_generation(REPO, OpenAIResource(), instance=instance)
    assert result.success
    assert _chat_count(server) == first_calls, "a no-op re-run must not call the LLM"
    meta = result.asset_materializations_for_node("questions")[0].metadata
    assert meta["generated"].value == 0 and meta["reused"].value == n_chunks * n_themes
    assert read_table(settings, "answers", REPO).num_rows == answers.num_rows


def _function(i: int) -> str:
    body = "".join(f"    total += os.path.getsize(names[{k}]) * {i + k}\n" for k in range(i % 4 + 2))
    return f"def measure_{i}(names):\n    total = 0\n{body}    return total\n\n\n"


REPORT = (
    "def report(rows):\n"
    + "".join(
        f"    line_{k} = json.dumps({{'row': rows[{k}], 'index': {k}, 'label': 'entry {k}'}})\n" for k in range(6)
    )
    + "    return [line_0, line_1, line_2, line_3, line_4, line_5]\n\n\n"
)
HEAD = "import json\nimport os\n\n\n"


def _module(functions: list[str]) -> str:
    return HEAD + "".join(functions)


def _questions(server: FaultServer, start: int) -> list[str]:
    """The code shown by the question requests sent since ``start``."""
    bodies = [r.body or {} for r in server.chat_records[start:]]
    return [b["messages"][1]["content"] for b in bodies if "Write" in b["messages"][-1]["content"]]


def test_an_edit_regenerates_only_its_chunk_and_moved_code_is_reused(
    project: Path,
    make_git_repo,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    """Real history through the whole chain (git repo, discovery, chunking, HTTP backend)."""
    functions = [_function(i) for i in range(12)]
    functions.insert(9, REPORT)
    repo = make_git_repo("stats", {"stats/core.py": _module(functions), "README.md": "# stats\n"})
    with FaultServer(capacity=4) as server:
        settings, key, instance = chain_project(project, repo.path, server.base_url, tiny_model_dir, 512)
        _run_chain(key, instance)
        chunks = read_table(settings, "code_chunks", key).to_pylist()
        core = [c for c in chunks if c["path"] == "stats/core.py"]
        assert len(core) >= 5  # a file of many chunks
        calls = len(server.chat_records)
        per_chunk = 1 + 2  # one question request (one theme) + an answer to each of its 2 questions
        assert calls == per_chunk * len(chunks)
        old_answers = read_table(settings, "answers", key).to_pylist()

        # 1. edit one function: only the chunk holding it is generated again
        edited = list(functions)
        edited[4] = edited[4].replace("    return total\n", "    return total // 2\n")
        repo.write("stats/core.py", _module(edited))
        repo.commit("halve measure_4")
        _run_chain(key, instance)
        sent = _questions(server, calls)
        assert len(server.chat_records) - calls == per_chunk * 1
        assert len(sent) == 1 and "return total // 2" in sent[0] and "def measure_4(" in sent[0]
        answers = read_table(settings, "answers", key).to_pylist()
        old_text = {c["chunk_key"]: c["text"] for c in chunks}
        untouched = {a["answer_id"] for a in old_answers if "def measure_4(" not in old_text[a["chunk_key"]]}
        assert len(untouched) == len(old_answers) - 2
        ids = {a["answer_id"] for a in answers}
        assert untouched <= ids and len(ids - untouched) == 2  # the edited chunk's two new answers
        calls = len(server.chat_records)

        # 2. lines inserted above everything: no request; provenance follows the code
        repo.write("stats/core.py", "\n" * 5 + _module(edited))
        repo.commit("blank lines on top")
        before = {a["answer_id"]: a for a in answers}
        _run_chain(key, instance)
        assert len(server.chat_records) == calls
        answers = read_table(settings, "answers", key).to_pylist()
        assert {a["answer_id"] for a in answers} == set(before)
        head = repo.git("rev-parse", "HEAD")
        for a in answers:
            assert a["commit"] == head
            shift = 5 if a["path"] == "stats/core.py" else 0
            assert (a["start_line"], a["end_line"]) == (
                before[a["answer_id"]]["start_line"] + shift,
                before[a["answer_id"]]["end_line"] + shift,
            )

        # 3. a function moved within the file: its chunk is reused, with its new lines
        moved = list(edited)
        moved.insert(1, moved.pop(9))  # report() from near the end to near the top
        repo.write("stats/core.py", _module(moved))
        repo.commit("move report up")
        _run_chain(key, instance)
        chunks = read_table(settings, "code_chunks", key).to_pylist()
        report = [c for c in chunks if "def report(" in c["text"]]
        assert len(report) == 1 and report[0]["symbol"] == "report"  # its own chunk
        answers = read_table(settings, "answers", key).to_pylist()
        reused = [a for a in answers if a["chunk_key"] == report[0]["chunk_key"]]
        assert reused and {a["answer_id"] for a in reused} <= set(before)
        assert all(a["start_line"] == report[0]["start_line"] < before[a["answer_id"]]["start_line"] for a in reused)
        assert not any("def report(" in code for code in _questions(server, calls))


def _run_chain(key: str, instance: DagsterInstance) -> None:
    result = materialize(chain_assets("answers"), partition_key=key, instance=instance, resources=chain_resources())
    assert result.success


def test_editing_a_template_regenerates_only_that_theme(
    project: Path,
    server: FaultServer,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    settings = openai_config(project, server.base_url, tiny_model_dir)
    rows = chunk_rows(REPO, SAMPLE_FILES)
    write_chunks(settings, REPO, rows)
    instance = DagsterInstance.ephemeral()
    assert run_generation(REPO, OpenAIResource(), instance=instance).success
    before = _chat_count(server)
    old = read_table(settings, "answers", REPO).to_pylist()

    template = project / "prompts" / "testing.yaml"
    template.write_text(
        template.read_text(encoding="utf-8").replace(
            "explain what each test checks and why.", "explain what each test checks, and why it matters."
        ),
        encoding="utf-8",
    )
    assert run_generation(REPO, OpenAIResource(), instance=instance).success

    new_requests = server.chat_records[before:]
    # only the testing theme's answers (its question template is unchanged)
    assert len(new_requests) == len(rows) * 2
    assert all("why it matters" in (r.body or {})["messages"][-1]["content"] for r in new_requests)
    new = read_table(settings, "answers", REPO).to_pylist()
    assert {r["answer_id"] for r in old if r["theme"] != "testing"} == {
        r["answer_id"] for r in new if r["theme"] != "testing"
    }
    assert not (
        {r["answer_id"] for r in old if r["theme"] == "testing"}
        & {r["answer_id"] for r in new if r["theme"] == "testing"}
    )
    assert {r["question_id"] for r in old} == {r["question_id"] for r in new}


def test_failures_are_recorded_and_retried_up_to_max_attempts(
    project: Path,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    # every request about calc/parser.py fails with a non-retryable HTTP 400
    with FaultServer([Fault.http(400, times=None, match="File: calc/parser.py")], capacity=8) as server:
        settings = openai_config(
            project, server.base_url, tiny_model_dir, generation={"themes": ["code_explanation"], "max_attempts": 2}
        )
        rows = chunk_rows(REPO, SAMPLE_FILES)
        parser_chunks = [r for r in rows if r["path"] == "calc/parser.py"]
        write_chunks(settings, REPO, rows)
        instance = DagsterInstance.ephemeral()

        assert run_generation(REPO, OpenAIResource(), instance=instance).success
        ledger = ledger_of(settings)
        failed = [e for e in ledger.entries(kind="question") if e.status == "failed"]
        assert len(failed) == len(parser_chunks)
        assert {e.error_category for e in failed} == {"http_status"} and all(e.attempts == 1 for e in failed)
        from cicdllm_assets.storage.state import StateStore

        recorded = (
            StateStore(settings.state_db)
            .connection()
            .execute(
                "SELECT category, COUNT(*) AS n FROM failures WHERE repo = ? AND stage = 'questions' GROUP BY category",
                (REPO,),
            )
            .fetchall()
        )
        assert {r["category"]: r["n"] for r in recorded} == {"http_status": len(parser_chunks)}
        questions = read_table(settings, "questions", REPO)
        assert "calc/parser.py" not in set(questions.column("path").to_pylist())

        # second run: the failed items are retried (attempt 2), everything else reused
        before = len(server.chat_records)
        assert run_generation(REPO, OpenAIResource(), instance=instance).success
        retried = server.chat_records[before:]
        assert len(retried) == len(parser_chunks)
        assert all(e.attempts == 2 for e in ledger_of(settings).entries(kind="question") if e.status == "failed")

        # third run: attempts exhausted, nothing is sent
        before = len(server.chat_records)
        result = run_generation(REPO, OpenAIResource(), instance=instance)
        assert result.success and len(server.chat_records) == before
        meta = result.asset_materializations_for_node("questions")[0].metadata
        assert meta["exhausted"].value == len(parser_chunks)

        # the server recovers and the failure is fixed by raising max_attempts
        server.clear_faults()
        openai_config(
            project, server.base_url, tiny_model_dir, generation={"themes": ["code_explanation"], "max_attempts": 3}
        )
        assert run_generation(REPO, OpenAIResource(), instance=instance).success
        questions = read_table(settings, "questions", REPO)
        assert "calc/parser.py" in set(questions.column("path").to_pylist())
        assert Counter(e.status for e in ledger_of(settings).entries(kind="question")) == Counter({"ok": len(rows)})


def test_parse_errors_keep_the_raw_text(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    with FaultServer(responder=lambda body: "I cannot think of anything to ask here.") as server:
        settings = openai_config(project, server.base_url, tiny_model_dir, generation={"themes": ["testing"]})
        rows = chunk_rows(REPO, {"calc/add.py": SAMPLE_FILES["calc/add.py"]})
        write_chunks(settings, REPO, rows)
        result = run_generation(REPO, OpenAIResource(), instance=DagsterInstance.ephemeral())
        assert result.success
        entries = ledger_of(settings).entries(kind="question")
        assert len(entries) == len(rows)
        assert all(e.status == "failed" and e.error_category == "parse_error" for e in entries)
        assert all(e.output == "I cannot think of anything to ask here." for e in entries)
        assert read_table(settings, "questions", REPO).num_rows == 0
        assert read_table(settings, "answers", REPO).num_rows == 0


def test_context_window_trimming(project: Path, server: FaultServer, tiny_model_dir: Path) -> None:  # noqa: F811
    long_file = "\n".join(f"def function_{i}(value):\n    return value * {i} + len(str(value))" for i in range(60))
    settings = openai_config(
        project,
        server.base_url,
        tiny_model_dir,
        context_window=1024,
        generation={
            "themes": ["code_explanation"],
            "question_max_tokens": 64,
            "answer_max_tokens": 1000,
            "questions_per_chunk": 1,
        },
    )
    rows = chunk_rows(REPO, {"big.py": long_file}, lines_per_chunk=120)
    write_chunks(settings, REPO, rows)
    assert run_generation(REPO, OpenAIResource(), instance=DagsterInstance.ephemeral()).success

    from cicdllm_assets.generation.prompts import PREFIX_MESSAGES  # noqa: F401 - layout is asserted below
    from cicdllm_assets.llm.base import ChatMessage
    from cicdllm_assets.llm.tokenizer_counter import load_token_counter

    counter = load_token_counter(str(tiny_model_dir / "tokenizer.json"))
    assert server.chat_records
    for record in server.chat_records:
        messages = [ChatMessage(m["role"], m["content"]) for m in (record.body or {})["messages"]]
        prompt = counter.count_prompt_tokens(messages)
        assert prompt + (record.body or {})["max_tokens"] <= 1024
        assert "trimmed to fit" in messages[1].content
    entries = ledger_of(settings).entries()
    assert entries and all(e.trimmed == 1 and e.status == "ok" for e in entries)
    answers = read_table(settings, "answers", REPO)
    assert answers.num_rows == 1 and answers.column("trimmed").to_pylist() == [True]
    assert all((r.body or {})["max_tokens"] < 1000 for r in server.chat_records if "Answer this" in r.prompt_text)
    assert answers.column("max_tokens").to_pylist()[0] < 1000  # the effective, capped budget is recorded


def test_circuit_open_fails_the_asset_and_keeps_progress(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    with FaultServer([Fault.http(503, times=None, match="File: util/io.py")], capacity=1) as server:
        settings = openai_config(
            project,
            server.base_url,
            tiny_model_dir,
            generation={"themes": ["code_explanation"], "batch_size": 1},
            openai={"circuit_breaker_failures": 2, "max_retries": 0, "max_concurrency": 1},
        )
        rows = chunk_rows(REPO, SAMPLE_FILES)
        write_chunks(settings, REPO, rows)
        result = run_generation(
            REPO, OpenAIResource(), selection=["questions"], instance=DagsterInstance.ephemeral(), raise_on_error=False
        )
        assert not result.success
        failure = result.failure_data_for_node("questions")
        assert failure is not None and "circuit breaker" in str(failure.error)
        ok = [e for e in ledger_of(settings).entries(kind="question") if e.status == "ok"]
        assert {e.chunk_key for e in ok} == {r["chunk_key"] for r in rows if r["path"] != "util/io.py"}


def test_assets_use_the_llm_pool_and_generation_group() -> None:
    from cicdllm_assets.assets.answers import answers
    from cicdllm_assets.assets.questions import questions

    for asset_def in (questions, answers):
        assert asset_def.op.pool == "llm"
        assert set(asset_def.group_names_by_key.values()) == {"generation"}
        assert {"app_config", "llm"} <= asset_def.required_resource_keys


def test_bad_template_fails_the_asset_naming_the_file(
    project: Path,
    server: FaultServer,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    settings = openai_config(project, server.base_url, tiny_model_dir)
    write_chunks(settings, REPO, chunk_rows(REPO, SAMPLE_FILES))
    bad = project / "prompts" / "testing.yaml"
    bad.write_text(bad.read_text(encoding="utf-8").replace("{path}", "{file_path}", 1), encoding="utf-8")
    result = run_generation(
        REPO, OpenAIResource(), selection=["questions"], instance=DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not result.success
    failure = result.failure_data_for_node("questions")
    assert failure is not None
    message = str(failure.error)
    assert "testing.yaml" in message and "{file_path}" in message
    assert server.chat_records == []


def _same_questions_for_every_theme(body: dict) -> str:
    """Question prompts get the same two questions whatever the theme (near-duplicates across a
    chunk's themes, which the questions table drops); answers are the default's."""
    from benchmarks.fault_server import _last_message, default_responder, prompt_identifiers

    last = _last_message(body)
    if "Write" in last and "question" in last.lower():
        name = (prompt_identifiers(body["messages"][1]["content"]) or ["main"])[0]
        return json.dumps([f"What does `{name}` return to its caller?", f"Which inputs make `{name}` fail?"])
    return default_responder(body)


def test_answers_ahead_are_what_the_answers_step_would_send(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    """With ``generation.answers_ahead`` (default) each chunk's answers go out in the questions
    step's batch once its questions are final, planned as the answers step plans them (the same
    rows, near-duplicates dropped): the answers step reuses every one and the table is the one
    the answers step makes without it. A run that does not materialize answers sends none."""
    with FaultServer(capacity=8, responder=_same_questions_for_every_theme) as server:
        answer_ids = {}
        for ahead in (True, False):
            shutil.rmtree(project / "data", ignore_errors=True)
            settings = openai_config(project, server.base_url, tiny_model_dir, generation={"answers_ahead": ahead})
            rows = chunk_rows(REPO, SAMPLE_FILES)
            write_chunks(settings, REPO, rows)
            n_items = len(rows) * 2  # chunks x themes
            start = _chat_count(server)
            result = run_generation(REPO, OpenAIResource(), instance=DagsterInstance.ephemeral())
            assert result.success
            answers = read_table(settings, "answers", REPO)
            kept = len(rows) * 2  # one theme's two questions per chunk: the other theme's are near-duplicates
            assert answers.num_rows == kept == read_table(settings, "questions", REPO).num_rows
            assert _chat_count(server) - start == n_items + kept  # none sent twice, none for a dropped question
            meta = {node: result.asset_materializations_for_node(node)[0].metadata for node in ("questions", "answers")}
            sent = (meta["questions"]["answers_ahead"].value, meta["answers"]["generated"].value)
            assert sent == ((kept, 0) if ahead else (0, kept))
            assert meta["answers"]["reused"].value == (kept if ahead else 0)
            answer_ids[ahead] = sorted(answers.column("answer_id").to_pylist())
        assert answer_ids[True] == answer_ids[False]

        shutil.rmtree(project / "data")
        settings = openai_config(project, server.base_url, tiny_model_dir)
        write_chunks(settings, REPO, rows)
        start = _chat_count(server)
        only = run_generation(REPO, OpenAIResource(), selection=["questions"], instance=DagsterInstance.ephemeral())
        assert only.success and _chat_count(server) - start == n_items  # the questions only
        assert only.asset_materializations_for_node("questions")[0].metadata["answers_ahead"].value == 0
