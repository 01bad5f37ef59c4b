"""The mlx chat export the adapter trains on: where it is, how many rows, its content hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cicdllm_assets.errors import INPUT, CicdllmError
from cicdllm_assets.export.records import SPLITS

CHAT_FORMAT = "mlx_chat"


class FinetuneInputError(CicdllmError, ValueError, category=INPUT, permanent=True):
    """The export cannot be trained on (missing, empty, or too small for the settings)."""


@dataclass(frozen=True)
class ChatData:
    """``<export dir>/mlx_chat``: rows per split and a hash of the files' bytes."""

    directory: Path
    counts: dict[str, int]
    content_hash: str

    @property
    def version(self) -> str:
        """Short dataset version shown to users (prefix of the content hash)."""
        return self.content_hash[:12]

    def split_file(self, split: str) -> Path:
        """``<split>.jsonl`` of this export (may not exist when the split is empty)."""
        return self.directory / f"{split}.jsonl"

    def read(self, split: str) -> list[dict[str, Any]]:
        """The records of one split ([] when its file is absent)."""
        path = self.split_file(split)
        if not path.is_file():
            return []
        rows: list[dict[str, Any]] = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise FinetuneInputError(f"{path}:{number}: not JSON: {exc}") from None
                if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
                    raise FinetuneInputError(f'{path}:{number}: expected {{"messages": [...]}}')
                rows.append(record)
        return rows


def locate_chat_data(export_dir: Path) -> ChatData:
    """Find and hash the mlx chat export below ``export_dir``.

    Raises :class:`FinetuneInputError` when there is no ``mlx_chat`` folder or no train rows.
    """
    directory = Path(export_dir) / CHAT_FORMAT
    if not directory.is_dir():
        raise FinetuneInputError(
            f"no {CHAT_FORMAT} export at {directory}: materialize training_dataset first "
            f"(`cicdllm run`) with {CHAT_FORMAT!r} in export.formats"
        )
    digest = hashlib.sha256()
    counts: dict[str, int] = {}
    for split in SPLITS:
        path = directory / f"{split}.jsonl"
        data = path.read_bytes() if path.is_file() else b""
        digest.update(f"{split}\0{len(data)}\0".encode())
        digest.update(data)
        counts[split] = sum(1 for line in data.splitlines() if line.strip())
    if counts["train"] == 0:
        raise FinetuneInputError(f"{directory}: the train split is empty; there is nothing to fine-tune on")
    return ChatData(directory=directory, counts=counts, content_hash=digest.hexdigest())
