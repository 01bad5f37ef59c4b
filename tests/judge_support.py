"""Helpers for the judge tests: the judge's config section, scripted verdicts, qa_pairs runs."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from dagster import AssetSpec, DagsterInstance, materialize
from dagster._core.execution.execute_in_process_result import ExecuteInProcessResult
from ruamel.yaml import YAML

from cicdllm_assets.io_managers.parquet_io_manager import PartitionedParquetIOManager
from cicdllm_assets.partitions import REPOS_PARTITIONS_NAME, repos_partitions
from cicdllm_assets.resources.config_resource import AppConfigResource

JUDGE_MODEL = "judge-big"

# Scripted replies, chosen per pair by a hash of its question (see :func:`verdict_kind`).
REPLIES: dict[str, str] = {
    # prose around a fenced JSON object, scores as int and str
    "good_json": (
        "Sure! Here is my evaluation of the pair.\n```json\n"
        '{"correctness": 5, "groundedness": "5", "usefulness": 4, "rationale": "Matches the code exactly."}\n'
        "```\nLet me know if you need more detail."
    ),
    # markdown bold labels, x/5 scores, a numbered list
    "good_lines": (
        "Evaluation:\n1. **Correctness:** 4/5\n2. **Groundedness:** 4/5\n3. **Usefulness** (1-5): 3\n"
        "**Rationale:** Mostly right, names only what the code shows."
    ),
    "low": "Correctness: 2\nGroundedness: 1\nUsefulness: 3\nRationale: It invents a cache the code does not have.",
    # out of range: a parse failure, retried per max_attempts
    "bad": "Correctness: 7\nGroundedness: 5\nUsefulness: 5\nRationale: Great.",
}
KINDS = tuple(REPLIES)
CHECKS = ("schema_valid", "no_empty_fields", "no_duplicates", "no_secrets", "splits_disjoint_by_file")
_QUESTION = re.compile(r"^Question: (.*)$", re.MULTILINE)


def verdict_kind(question: str) -> str:
    """Which scripted reply a pair with this question gets."""
    return KINDS[int(hashlib.sha256(question.strip().encode("utf-8")).hexdigest(), 16) % len(KINDS)]


def scripted_judge(body: dict[str, Any]) -> str:
    """FaultServer responder: the reply of :func:`verdict_kind` for the judged question."""
    last = str(body["messages"][-1]["content"])
    match = _QUESTION.search(last)
    assert match is not None, f"not a judge request: {last[:200]}"
    return REPLIES[verdict_kind(match.group(1))]


def good_judge(body: dict[str, Any]) -> str:
    """FaultServer responder: a good verdict for every pair."""
    return REPLIES["good_lines"]


def add_judge_config(project: Path, judge: dict[str, Any]) -> None:
    """Set ``quality.judge`` in the project's cicdllm.yaml (other sections kept)."""
    path = project / "cicdllm.yaml"
    yaml = YAML(typ="safe")
    data = yaml.load(path.read_text(encoding="utf-8")) or {}
    data.setdefault("quality", {})["judge"] = judge
    with path.open("w", encoding="utf-8") as handle:
        yaml.dump(data, handle)


def openai_judge(base_url: str, tokenizer: Path, **judge: Any) -> dict[str, Any]:
    """A ``quality.judge`` section: enabled, its own OpenAI backend at ``base_url``, fast retries."""
    return {
        "enabled": True,
        **judge,
        "llm": {
            "backend": "openai",
            "model": JUDGE_MODEL,
            "context_window": 4096,
            "openai": {
                "base_url": base_url,
                "tokenizer": str(tokenizer),
                "max_concurrency": 2,
                "max_retries": 1,
                "backoff_base_seconds": 0.01,
                "backoff_max_seconds": 0.05,
                "api_key_env": None,
            },
        },
    }


def run_qa_pairs(
    repo: str, instance: DagsterInstance, *, with_export: bool = False, raise_on_error: bool = True
) -> ExecuteInProcessResult:
    """Materialize ``qa_pairs`` (and with ``with_export`` the training dataset and its checks)
    for one partition from the stored answers and code_chunks."""
    from cicdllm_assets.assets import dataset_checks as checks
    from cicdllm_assets.assets.qa_pairs import qa_pairs
    from cicdllm_assets.assets.training_dataset import training_dataset

    if repo not in instance.get_dynamic_partitions(REPOS_PARTITIONS_NAME):
        instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, [repo])
    specs = [AssetSpec(name, partitions_def=repos_partitions) for name in ("code_chunks", "answers")]
    resources = {"app_config": AppConfigResource(), "io_manager": PartitionedParquetIOManager()}
    result = materialize(
        [*specs, qa_pairs], selection=["qa_pairs"], partition_key=repo, instance=instance, resources=resources,
        raise_on_error=raise_on_error,
    )  # fmt: skip
    if with_export and result.success:
        return materialize(
            [*specs, qa_pairs, training_dataset, *(getattr(checks, n) for n in CHECKS)], selection=["training_dataset"],
            instance=instance, resources=resources, raise_on_error=raise_on_error,
        )  # fmt: skip
    return result
