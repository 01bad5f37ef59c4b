"""The one exception base of the project and the failure categories its records use.

Domain code raises a :class:`CicdllmError` subclass and never imports Dagster; the asset step
template (:mod:`cicdllm_assets.assets._step`) turns one into a failure record (its
``category``) and a Dagster ``Failure`` (skipping the step retry policy when ``permanent``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

# Failure categories stored in the ``failures`` table (besides the generation ledger's own
# request categories, see ``llm.base.ErrorCategory``).
CONFIG = "config"
REPOS_FILE = "repos_file"
NOT_IN_REPOS_FILE = "not_in_repos_file"
GIT = "git"
READ = "read"
TOKENIZER = "tokenizer"
INPUT = "input"
CIRCUIT_OPEN = "circuit_open"
INTERNAL = "internal"


class CicdllmError(Exception):
    """Base of every cicdllm error.

    ``category`` is what a failure record stores; ``permanent`` means a retry cannot fix it
    (bad config or input), so a step fails without the retry policy. Subclasses set both as
    class keywords: ``class ConfigError(CicdllmError, category=CONFIG, permanent=True)``.
    """

    category: ClassVar[str] = INTERNAL
    permanent: bool = False

    def __init_subclass__(cls, *, category: str | None = None, permanent: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if category is not None:
            cls.category = category
        if permanent is not None:
            cls.permanent = permanent


class Log(Protocol):
    """The part of a logger (stdlib or Dagster's ``context.log``) domain code uses."""

    def info(self, msg: str) -> Any: ...  # pragma: no cover - protocol

    def warning(self, msg: str) -> Any: ...  # pragma: no cover - protocol
