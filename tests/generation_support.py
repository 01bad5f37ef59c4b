"""Helpers for the generation tests: project config, code_chunks rows, Dagster runs."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from dagster import AssetSpec, DagsterInstance, materialize
from dagster._core.execution.execute_in_process_result import ExecuteInProcessResult

from cicdllm_assets.chunking.rows import chunk_key
from cicdllm_assets.config import Settings, load_settings
from cicdllm_assets.generation.ledger import Ledger
from cicdllm_assets.io_managers.parquet_io_manager import PartitionedParquetIOManager
from cicdllm_assets.llm.base import ChatMessage, GenerationRequest, GenerationResult
from cicdllm_assets.partitions import REPOS_PARTITIONS_NAME, repos_partitions
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.storage.state import StateStore
from cicdllm_assets.storage.tables import TableStore

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPTS_SRC = REPO_ROOT / "prompts"

SAMPLE_FILES: dict[str, str] = {
    "calc/add.py": (
        'def add(a, b):\n    """Sum two numbers."""\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n'
    ),
    "calc/parser.py": (
        "class Parser:\n    def parse(self, text: str) -> list[str]:\n        return text.split()\n\n"
        "    def count(self, text: str) -> int:\n        return len(self.parse(text))\n"
    ),
    "util/io.py": (
        "import os\n\n\ndef list_names(folder):\n    return sorted(os.listdir(folder))\n\n\n"
        "def read_text(path):\n    with open(path, encoding='utf-8') as handle:\n        return handle.read()\n"
    ),
}


def spawn_cli_run(project: Path) -> subprocess.Popen[bytes]:
    """``cicdllm run --json`` on ``project`` as a real process in its own session (stdout/stderr piped)."""
    env = {**os.environ, "CICDLLM_CONFIG": str(project / "cicdllm.yaml"), "DAGSTER_HOME": str(project / "dagster_home")}
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "cicdllm"), "run", "--json"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def write_project_config(project: Path, **sections: dict[str, Any]) -> None:
    """Write cicdllm.yaml (storage in the project) with extra sections, and copy prompts/."""
    from ruamel.yaml import YAML

    data: dict[str, Any] = {"storage": {"data_dir": "data", "dagster_home": "dagster_home"}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    with (project / "cicdllm.yaml").open("w", encoding="utf-8") as handle:
        YAML(typ="safe").dump(data, handle)
    if not (project / "prompts").exists():
        shutil.copytree(PROMPTS_SRC, project / "prompts")


def openai_config(
    project: Path,
    base_url: str,
    tokenizer: Path,
    *,
    context_window: int = 4096,
    generation: dict[str, Any] | None = None,
    openai: dict[str, Any] | None = None,
) -> Settings:
    """Configure the OpenAI backend against ``base_url`` with fast retries, and generation bounds."""
    gen = {
        "themes": ["code_explanation", "testing"],
        "questions_per_chunk": 2,
        "question_max_tokens": 128,
        "answer_max_tokens": 256,
        "batch_size": 4,
        "max_attempts": 2,
    }
    gen.update(generation or {})
    oa = {
        "base_url": base_url,
        "model": "fake-model",
        "tokenizer": str(tokenizer),
        "max_concurrency": 4,
        "max_retries": 1,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        "timeout_seconds": 30.0,
        "api_key_env": None,
    }
    oa.update(openai or {})
    write_project_config(
        project,
        generation=gen,
        llm={"backend": "openai", "model": "fake-model", "context_window": context_window, "openai": oa},
    )
    return load_settings()


def chunk_rows(
    repo: str, files: dict[str, str], lines_per_chunk: int = 4, commit: str = "c0ffee"
) -> list[dict[str, Any]]:
    """code_chunks rows for ``files`` (fixed line windows)."""
    rows: list[dict[str, Any]] = []
    for path, text in sorted(files.items()):
        blob = hashlib.sha1(f"blob {len(text.encode())}\0{text}".encode()).hexdigest()  # noqa: S324 - git's id
        lines = text.splitlines()
        for start in range(0, len(lines), lines_per_chunk):
            part = lines[start : start + lines_per_chunk]
            s, e = start + 1, start + len(part)
            body = "\n".join(part) + "\n"
            symbol = next(
                (
                    w.split("(")[0].split(":")[0]
                    for line in part
                    for w in line.split()[1:2]
                    if line.lstrip().startswith(("def ", "class "))
                ),
                "",
            )
            imports = "os" if "import os" in text else ""
            rows.append(
                {
                    "repo": repo,
                    "commit": commit,
                    "license": "MIT",
                    "path": path,
                    "blob_sha": blob,
                    "language": "python",
                    "chunk_key": chunk_key(repo, path, "python", symbol, imports, body),
                    "start_line": s,
                    "end_line": e,
                    "symbol": symbol,
                    "imports": imports,
                    "text": body,
                    "token_count": len(body.split()),
                    "redactions": 0,
                }
            )
    return rows


def write_chunks(settings: Settings, repo: str, rows: Sequence[dict[str, Any]]) -> None:
    """Store a code_chunks partition as the upstream asset would."""
    TableStore(settings.tables_dir).write("code_chunks", repo, pa.Table.from_pylist(list(rows)))


def generation_assets() -> list[Any]:
    """questions and answers, with code_chunks as an external partitioned spec."""
    from cicdllm_assets.assets.answers import answers
    from cicdllm_assets.assets.questions import questions

    return [AssetSpec("code_chunks", partitions_def=repos_partitions), questions, answers]


def run_generation(
    repo: str,
    llm: Any,
    selection: Sequence[str] = ("questions", "answers"),
    instance: DagsterInstance | None = None,
    raise_on_error: bool = True,
) -> ExecuteInProcessResult:
    """Materialize the selected generation assets for one repo partition."""
    instance = instance or DagsterInstance.get()
    if repo not in instance.get_dynamic_partitions(REPOS_PARTITIONS_NAME):
        instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, [repo])
    return materialize(
        generation_assets(),
        selection=list(selection),
        partition_key=repo,
        instance=instance,
        resources={"app_config": AppConfigResource(), "io_manager": PartitionedParquetIOManager(), "llm": llm},
        raise_on_error=raise_on_error,
    )


def chain_assets(last: str = "training_dataset") -> list[Any]:
    """The pipeline's assets in chain order, from repositories up to and including ``last``."""
    from cicdllm_assets.assets.answers import answers
    from cicdllm_assets.assets.code_chunks import code_chunks
    from cicdllm_assets.assets.qa_pairs import qa_pairs
    from cicdllm_assets.assets.questions import questions
    from cicdllm_assets.assets.repositories import repositories
    from cicdllm_assets.assets.source_files import source_files
    from cicdllm_assets.assets.training_dataset import training_dataset

    chain = [repositories, source_files, code_chunks, questions, answers, qa_pairs, training_dataset]
    names = [a.key.to_user_string() for a in chain]
    return chain[: names.index(last) + 1]


def chain_resources() -> dict[str, Any]:
    """Resources for the whole chain with the OpenAI backend (config from the project)."""
    from cicdllm_assets.resources.llm.openai_resource import OpenAIResource

    return {"app_config": AppConfigResource(), "io_manager": PartitionedParquetIOManager(), "llm": OpenAIResource()}


def chain_project(
    project: Path, repo_path: Path, base_url: str, tokenizer_dir: Path, chunk_max_tokens: int
) -> tuple[Settings, str, DagsterInstance]:
    """Set up one real repo for the whole chain: repos.txt, the OpenAI backend at ``base_url``
    (one theme), the tiny model's tokenizer for chunking with ``chunk_max_tokens``.

    Returns (settings, the repo's partition key, an ephemeral instance with it registered).
    """
    from cicdllm_assets.repos.repos_file import parse_repos_text

    (project / "repos.txt").write_text(f"{repo_path}\n", encoding="utf-8")
    openai_config(project, base_url, tokenizer_dir, generation={"themes": ["code_explanation"]})
    with (project / "cicdllm.yaml").open("a", encoding="utf-8") as handle:
        handle.write(
            f"processing:\n  tokenizer: {tokenizer_dir / 'tokenizer.json'}\n  chunk_max_tokens: {chunk_max_tokens}\n"
        )
    settings = load_settings()
    key = parse_repos_text(f"{repo_path}\n", project)[0].key
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, [key])
    return settings, key, instance


def ledger_of(settings: Settings) -> Ledger:
    """The ledger in the project's state DB."""
    return Ledger(StateStore(settings.state_db))


def read_table(settings: Settings, asset: str, repo: str) -> pa.Table:
    """One stored partition (must exist)."""
    table = TableStore(settings.tables_dir).read(asset, repo)
    assert table is not None, f"{asset}/{repo} was not written"
    return table


@dataclass
class ScriptedBackend:
    """A deterministic in-process LLMBackend for ledger-logic unit tests.

    Token counts are whitespace words (+4 per message); ``replies`` maps a substring of
    the last message to a reply; ``fail`` maps a substring to an error category.
    """

    window: int = 4096
    replies: dict[str, str] = field(default_factory=dict)
    fail: dict[str, str] = field(default_factory=dict)
    calls: list[GenerationRequest] = field(default_factory=list)
    model: str = "scripted"

    @property
    def model_id(self) -> str:
        return self.model

    @property
    def context_window(self) -> int:
        return self.window

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m.content.split()) + 4 for m in messages)

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[GenerationResult]:
        from cicdllm_assets.llm.base import RequestFailure

        for request in requests:
            self.calls.append(request)
            last = request.messages[-1].content
            prompt_tokens = self.count_prompt_tokens(request.messages)
            category = next((c for s, c in self.fail.items() if s in last), None)
            if category is not None:
                yield GenerationResult(
                    request.key,
                    error=RequestFailure(category, f"scripted {category}"),  # type: ignore[arg-type]
                    prompt_tokens=prompt_tokens,
                )
                continue
            text = next(
                (r for s, r in self.replies.items() if s in last),
                '["What does this code compute exactly?", "How would you test this code well?"]',
            )
            yield GenerationResult(
                request.key, text=text, prompt_tokens=prompt_tokens, completion_tokens=len(text.split()), latency_ms=1.0
            )

    def close(self) -> None:
        return None


def materialization_values(result: ExecuteInProcessResult, node: str) -> dict[str, Any]:
    """Plain values of the first materialization's metadata of ``node``."""
    metadata = result.asset_materializations_for_node(node)[0].metadata
    return {key: value.value for key, value in metadata.items()}
