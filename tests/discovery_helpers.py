"""Helpers for discovery/chunking tests: a small real BPE tokenizer trained offline."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from cicdllm_assets.storage.tables import TableStore

_CORPUS = [
    "import os\nimport sys\nfrom pathlib import Path\n\n",
    "def main(argv: list[str]) -> int:\n    for arg in argv:\n        print(arg)\n    return 0\n",
    "class Example:\n    def __init__(self, value):\n        self.value = value\n\n"
    "    def compute(self, other):\n        return self.value + other * 2\n",
    "function add(a, b) {\n  return a + b;\n}\nconst x = add(1, 2);\nexport default x;\n",
    'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hello")\n}\n',
    "# Title\n\nSome documentation text about the project and how to use it.\n",
    "value_0 = compute(value_1, value_2) + total_count - offset_index\n",
    "café résumé naïve über straße — “quotes” ©\n",
]


def train_tokenizer(path: Path, vocab_size: int = 1200) -> Path:
    """Train a byte-level BPE on a little code and save it as tokenizer.json at ``path``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 20, trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def write_config(project: Path, tokenizer_path: Path, extra_processing: str = "", budget: int = 128) -> None:
    """Write the project's cicdllm.yaml with a tokenizer path and chunk budget."""
    (project / "cicdllm.yaml").write_text(
        "storage:\n  data_dir: data\n  dagster_home: dagster_home\n"
        "processing:\n"
        f"  tokenizer: {tokenizer_path}\n"
        f"  chunk_max_tokens: {budget}\n"
        f"{extra_processing}",
        encoding="utf-8",
    )


def write_repositories_row(
    settings: Any, repo: str, local_path: Path, head_commit: str, license_id: str = "MIT"
) -> None:
    """Stand in for the upstream ``repositories`` asset: write its one-row partition table."""
    table = pa.Table.from_pylist(
        [
            {
                "repo": repo,
                "url": f"file://{local_path}",
                "ref": None,
                "local_path": str(local_path),
                "head_commit": head_commit,
                "default_branch": "main",
                "license": license_id,
                "size_bytes": 0,
                "fetched_at": datetime.now(UTC),
            }
        ]
    )
    TableStore(settings.tables_dir).write("repositories", repo, table)


def materialize_ingest(repo: str, assets: Sequence[Any] | None = None, instance: Any = None) -> Any:
    """Materialize source_files and code_chunks for one partition (repositories read from storage)."""
    from dagster import DagsterInstance, SourceAsset, materialize

    from cicdllm_assets.assets.code_chunks import code_chunks
    from cicdllm_assets.assets.source_files import source_files
    from cicdllm_assets.io_managers import PartitionedParquetIOManager
    from cicdllm_assets.partitions import repos_partitions
    from cicdllm_assets.resources.config_resource import AppConfigResource

    instance = instance or DagsterInstance.get()
    if not instance.has_dynamic_partition("repos", repo):
        instance.add_dynamic_partitions("repos", [repo])
    upstream = SourceAsset(key="repositories", partitions_def=repos_partitions)
    return materialize(
        [upstream, *(assets if assets is not None else [source_files, code_chunks])],
        partition_key=repo,
        instance=instance,
        resources={"app_config": AppConfigResource(), "io_manager": PartitionedParquetIOManager()},
    )
