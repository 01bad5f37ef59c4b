"""The configured model's tokenizer (``tokenizers``), with call counters for tests and metrics."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Encoding, Tokenizer


class TokenCounter:
    """Counts tokens with a ``tokenizer.json``; ``identity`` hashes the file so caches key on it.

    ``calls`` / ``texts_encoded`` count every encode performed through this object, so tests
    can prove that a cached blob is never tokenized again.
    """

    def __init__(self, path: Path) -> None:
        path = Path(path)
        try:
            raw = path.read_bytes()
            tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
        except (OSError, UnicodeDecodeError, Exception) as exc:
            raise ValueError(f"cannot load tokenizer from {path}: {exc}") from exc
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.path = path
        self.tokenizer = tokenizer
        self.identity = hashlib.sha256(raw).hexdigest()[:16]
        self._lock = threading.Lock()
        self.calls = 0
        self.texts_encoded = 0
        self.chars_encoded = 0

    def _count_call(self, texts: Sequence[str]) -> None:
        with self._lock:
            self.calls += 1
            self.texts_encoded += len(texts)
            self.chars_encoded += sum(len(t) for t in texts)

    def encode_batch(self, texts: Sequence[str]) -> list[Encoding]:
        """Encode many texts at once (parallel in Rust, GIL released), without special tokens."""
        if not texts:
            return []
        self._count_call(texts)
        return list(self.tokenizer.encode_batch(list(texts), add_special_tokens=False))

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        """Token counts of many texts (no offsets computed)."""
        if not texts:
            return []
        self._count_call(texts)
        return [len(e.ids) for e in self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]

    def count(self, text: str) -> int:
        """Token count of one text."""
        return self.count_batch([text])[0]
