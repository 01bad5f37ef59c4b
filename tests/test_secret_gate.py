"""The secret gate before the backend: a rendered request that still holds a secret is never
sent, whichever backend (the in-process MLX one or the OpenAI one against a loopback server),
and whatever field the template placed it through; the item fails with category ``secret``.

The default templates no longer place ``{imports}``; the theme here does (a user's template
edit), with a chunk whose imports line bypassed redaction."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from benchmarks.fault_server import FaultServer
from cicdllm_assets.config import load_settings
from cicdllm_assets.generation.chunks import Chunk
from cicdllm_assets.generation.engine import StageRunner
from cicdllm_assets.generation.ledger import Ledger
from cicdllm_assets.generation.prompts import prompt_manager, resolve_prompts_dir
from cicdllm_assets.generation.questions_stage import plan_questions, question_postprocess
from cicdllm_assets.llm.base import GenerationRequest, GenerationResult, LLMBackend
from cicdllm_assets.llm.mlx_backend import MLXBackend
from cicdllm_assets.llm.tokenizer_counter import TokenCounter
from cicdllm_assets.storage.state import StateStore
from tests.generation_support import write_project_config
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - fixture
from tests.openai_helpers import make_backend

STRIPE_KEY = "sk_live_" + "Vb8Nq3Lx7Rt2Wz5Km9Hp4Jd6"  # fake, in Stripe's format
CLEAN = Chunk("acme/app", "c-clean", "calc.py", 1, 2, "def add(a, b):\n    return a + b\n", "python", "add")
# A field that bypassed redaction (as if a template placed something raw): the imports line.
RAW = Chunk(
    "acme/app",
    "c-raw",
    "pay.js",
    1,
    3,
    "export function pay(x) {\n  return stripe.charge(x);\n}\n",
    "javascript",
    "pay",
    imports=f'const stripe = require("stripe")("{STRIPE_KEY}");',
)


# A user's theme that places every chunk field, imports included.
RAW_FIELDS_THEME = """description: places every chunk field
context: |
  Repository: {repo}
  File: {path} (lines {start_line}-{end_line}, {language})
  Symbol: {symbol}
  Imports: {imports}

  ```{language}
  {code}
  ```
question: |
  Write {n_questions} questions about {symbol}. Reply with only a JSON array of strings.
answer: |
  {question}
"""


def _prompts_dir(root: Path) -> Path:
    import shutil

    target = root / "prompts"
    if not target.exists():
        shutil.copytree(Path(__file__).resolve().parent.parent / "prompts", target)
    (target / "raw_fields.yaml").write_text(RAW_FIELDS_THEME, encoding="utf-8")
    return target


class Spy:
    """Delegates to a real backend and records every request that reached it."""

    def __init__(self, backend: LLMBackend) -> None:
        self.backend = backend
        self.seen: list[GenerationRequest] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.backend, name)

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[GenerationResult]:
        batch = list(requests)  # a RequestFeed is read once
        self.seen.extend(batch)
        return self.backend.generate(batch)


def _run(project: Path, backend: LLMBackend) -> tuple[dict[str, int], Ledger, StateStore]:
    write_project_config(
        project,
        generation={
            "themes": ["raw_fields"],
            "questions_per_chunk": 1,
            "question_max_tokens": 16,
            "max_attempts": 1,
        },
    )
    _prompts_dir(project)
    settings = load_settings()
    gen = settings.config.generation
    themes = [prompt_manager(resolve_prompts_dir(gen, settings.prompts_dir)).theme("raw_fields")]
    state = StateStore(settings.state_db)
    ledger = Ledger(state)
    runner = StageRunner(
        backend=backend,
        ledger=ledger,
        state=state,
        generation=gen,
        performance=settings.config.performance,
        repo="acme/app",
        stage="questions",
        pause_hook=lambda: None,
    )
    work = plan_questions([CLEAN, RAW], themes, backend.model_id, gen, "acme/app")
    stats = runner.run(work, question_postprocess(gen))
    return dict(stats.failures), ledger, state


def _assert_blocked(failures: dict[str, int], ledger: Ledger, state: StateStore, sent: list[str]) -> None:
    assert failures.get("secret") == 1
    assert len(sent) == 1 and "def add" in sent[0]  # the clean item went out, the raw one never
    assert not [text for text in sent if STRIPE_KEY in text]
    entries = {e.chunk_key: e for e in ledger.entries()}
    assert entries["c-raw"].status == "failed" and entries["c-raw"].error_category == "secret"
    assert STRIPE_KEY not in (entries["c-raw"].error_message or "")
    assert "stripe_key" in (entries["c-raw"].error_message or "")
    assert entries["c-clean"].error_category in (None, "parse_error")  # generated: the backend ran it
    recorded = (
        state.connection()
        .execute("SELECT message FROM failures WHERE repo = 'acme/app' AND category = 'secret'")
        .fetchall()
    )
    assert len(recorded) == 1 and STRIPE_KEY not in recorded[0][0]


def test_gate_blocks_before_the_openai_backend(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    counter = TokenCounter(tiny_model_dir)
    with FaultServer() as server, make_backend(server.base_url, token_counter=counter) as backend:
        failures, ledger, state = _run(project, backend)
        sent = [record.prompt_text for record in server.chat_records]
    _assert_blocked(failures, ledger, state, sent)


def test_gate_blocks_before_the_mlx_backend(project: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    spy = Spy(MLXBackend(str(tiny_model_dir), batch_size=4))
    failures, ledger, state = _run(project, spy)  # type: ignore[arg-type]
    sent = ["\n".join(m.content for m in request.messages) for request in spy.seen]
    _assert_blocked(failures, ledger, state, sent)


@pytest.mark.parametrize("field", ["imports", "symbol", "path", "text", "repo"])
def test_gate_sees_every_placeable_field(field: str, tmp_path: Path) -> None:
    from dataclasses import replace

    from cicdllm_assets.llm.base import request_secrets

    chunk = replace(CLEAN, **{field: getattr(CLEAN, field) + f" {STRIPE_KEY}"})
    theme = prompt_manager(_prompts_dir(tmp_path)).theme("raw_fields")
    messages = theme.question_builder(chunk, 1)(chunk.text)
    request = GenerationRequest(key="k", messages=tuple(messages), max_tokens=8)
    assert request_secrets(request) != []
