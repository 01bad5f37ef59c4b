"""Secret detection and redaction (placeholder: identity until the quality work lands)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RedactionResult:
    """Text with secrets replaced by typed placeholders like ``[REDACTED:aws_access_key]``."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Number of secrets replaced."""
        return sum(self.counts.values())


def redact_secrets(text: str, path: str = "") -> RedactionResult:
    """Replace every secret in ``text`` (``path`` hints the file type, e.g. .env, .yaml)."""
    return RedactionResult(text=text)
