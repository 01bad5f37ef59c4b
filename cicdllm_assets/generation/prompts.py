"""Theme prompt templates: loaded from ``prompts/``, validated, hashed, hot-reloaded.

Each theme is one YAML file ``<theme>.yaml`` with ``question`` and ``answer``
templates (and optional ``description``, ``system``, ``context``); ``_defaults.yaml``
provides the ``system`` and ``context`` every theme shares unless it sets its own.
Placeholders are ``{name}``; ``{{`` and ``}}`` are literal braces; any other brace
(e.g. a JSON example) is literal text. See ``prompts/README.md``.

Messages are laid out prefix first so backends can reuse a chunk's KV cache:
1. system, 2. user: the code chunk (``context``), 3. user: the instruction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from cicdllm_assets.config.models import GenerationConfig
from cicdllm_assets.errors import CONFIG, CicdllmError
from cicdllm_assets.generation.chunks import Chunk
from cicdllm_assets.llm.base import ChatMessage

log = logging.getLogger(__name__)

LAYOUT_VERSION = "v1"
"""Bump when the message layout changes in code: every template hash changes with it."""

PREFIX_MESSAGES = 2
"""System + code chunk: the shared prefix of every request about one chunk."""

DEFAULTS_FILE = "_defaults"
CHUNK_FIELDS: tuple[str, ...] = ("repo", "path", "language", "symbol", "imports", "start_line", "end_line", "code")
ALLOWED_PLACEHOLDERS: dict[str, frozenset[str]] = {
    "system": frozenset(CHUNK_FIELDS),
    "context": frozenset(CHUNK_FIELDS),
    "question": frozenset((*CHUNK_FIELDS, "n_questions", "examples")),
    "answer": frozenset((*CHUNK_FIELDS, "question", "repo_context")),
}
TEMPLATE_KEYS = frozenset({"description", "system", "context", "question", "answer"})
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_THEME_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


class PromptTemplateError(CicdllmError, ValueError, category=CONFIG, permanent=True):
    """A template file is missing, unreadable or invalid; the message names the file."""


def placeholders(template: str) -> list[str]:
    """The ``{name}`` placeholders used in a template, in order of appearance."""
    return [m.group(1) for m in _PLACEHOLDER.finditer(template) if m.group(1)]


def render(template: str, values: Mapping[str, str]) -> str:
    """Substitute ``{name}`` placeholders in one pass (values are never re-scanned)."""

    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        if found == "{{":
            return "{"
        if found == "}}":
            return "}"
        return values[match.group(1)]

    return _PLACEHOLDER.sub(replace, template)


def _content_hash(parts: Mapping[str, str]) -> str:
    canonical = json.dumps({"layout": LAYOUT_VERSION, **parts}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class ThemeTemplate:
    """One theme's templates and their content hashes (question and answer separately)."""

    name: str
    path: Path
    description: str
    system: str
    context: str
    question: str
    answer: str

    @property
    def question_hash(self) -> str:
        """Changes only when the system, context or question template changes."""
        return _content_hash({"system": self.system, "context": self.context, "question": self.question})

    @property
    def answer_hash(self) -> str:
        """Changes only when the system, context or answer template changes."""
        return _content_hash({"system": self.system, "context": self.context, "answer": self.answer})

    @cached_property
    def _chunk_fields(self) -> dict[str, tuple[str, ...]]:
        """Per instruction kind, the chunk placeholders its prompts (system, context, instruction) show."""
        shared = {*placeholders(self.system), *placeholders(self.context)}
        return {
            kind: tuple(name for name in CHUNK_FIELDS if name in shared or name in placeholders(instruction))
            for kind, instruction in (("question", self.question), ("answer", self.answer))
        }

    def chunk_input(self, chunk: Chunk, kind: Literal["question", "answer"]) -> str:
        """A hash of the chunk values this theme's ``kind`` prompt shows: the code, and its path,
        symbol, imports... only as far as the templates place them (lines, if they place them).

        With the template hash, model and params it determines the output: the ledger key.
        """
        values = chunk.placeholder_values()
        return _content_hash({name: values[name] for name in self._chunk_fields[kind]})

    def _messages(
        self, chunk: Chunk, instruction: str, extra: Mapping[str, str], code: str | None
    ) -> tuple[ChatMessage, ...]:
        values = {**chunk.placeholder_values(code), **extra}
        return (
            ChatMessage("system", render(self.system, values).strip()),
            ChatMessage("user", render(self.context, values).strip()),
            ChatMessage("user", render(instruction, values).strip()),
        )

    @cached_property
    def uses_examples(self) -> bool:
        """Whether the question template shows planned example questions (``{examples}``)."""
        return "examples" in placeholders(self.question)

    @cached_property
    def uses_repo_context(self) -> bool:
        """Whether the answer template shows repo-wide context (``{repo_context}``)."""
        return "repo_context" in placeholders(self.answer)

    def question_messages(
        self, chunk: Chunk, n_questions: int, code: str | None = None, examples: str = ""
    ) -> tuple[ChatMessage, ...]:
        """Messages asking for ``n_questions`` questions about ``chunk`` (``code`` overrides its text),
        shaped by ``examples`` (see :mod:`cicdllm_assets.generation.kinds`)."""
        extra = {"n_questions": str(n_questions), "examples": examples}
        return self._messages(chunk, self.question, extra, code)

    def answer_messages(
        self, chunk: Chunk, question: str, code: str | None = None, repo_context: str = ""
    ) -> tuple[ChatMessage, ...]:
        """Messages asking to answer ``question`` about ``chunk`` (``repo_context``: definitions
        from elsewhere in the repository, see :mod:`cicdllm_assets.generation.symbols`)."""
        return self._messages(chunk, self.answer, {"question": question, "repo_context": repo_context}, code)

    def question_builder(
        self, chunk: Chunk, n_questions: int, examples: str = ""
    ) -> Callable[[str], tuple[ChatMessage, ...]]:
        """``code -> messages`` for context fitting of a question request."""
        return lambda code: self.question_messages(chunk, n_questions, code, examples)

    def answer_builder(
        self, chunk: Chunk, question: str, repo_context: str = ""
    ) -> Callable[[str], tuple[ChatMessage, ...]]:
        """``code -> messages`` for context fitting of an answer request."""
        return lambda code: self.answer_messages(chunk, question, code, repo_context)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PromptTemplateError(f"{path}: cannot read: {exc.strerror}") from exc
    except YAMLError as exc:
        raise PromptTemplateError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PromptTemplateError(f"{path}: top level must be a mapping of template fields")
    unknown = sorted(set(data) - TEMPLATE_KEYS)
    if unknown:
        raise PromptTemplateError(f"{path}: unknown field(s) {unknown}; allowed: {sorted(TEMPLATE_KEYS)}")
    for key, value in data.items():
        if not isinstance(value, str):
            raise PromptTemplateError(f"{path}: field '{key}' must be a string, got {type(value).__name__}")
    return data


def _check_placeholders(path: Path, field: str, template: str) -> None:
    allowed = ALLOWED_PLACEHOLDERS[field]
    unknown = sorted({name for name in placeholders(template) if name not in allowed})
    if unknown:
        names = ", ".join("{" + n + "}" for n in unknown)
        raise PromptTemplateError(
            f"{path}: unknown placeholder {names} in '{field}'; allowed in '{field}': "
            + ", ".join("{" + n + "}" for n in sorted(allowed))
            + " (write {{ and }} for literal braces)"
        )


def _build_theme(
    name: str, path: Path, data: Mapping[str, str], defaults: Mapping[str, str], defaults_path: Path
) -> ThemeTemplate:
    fields: dict[str, str] = {}
    for field in ("system", "context", "question", "answer"):
        value = data.get(field)
        source = path
        if value is None and field in ("system", "context"):
            value, source = defaults.get(field), defaults_path
        if value is None or not value.strip():
            where = f" (or in {defaults_path.name})" if field in ("system", "context") else ""
            raise PromptTemplateError(f"{path}: missing or empty field '{field}'{where}")
        _check_placeholders(source, field, value)
        fields[field] = value
    if "code" not in placeholders(fields["context"]):
        raise PromptTemplateError(f"{path}: the 'context' template must contain {{code}} (the code chunk)")
    if "question" not in placeholders(fields["answer"]):
        raise PromptTemplateError(f"{path}: the 'answer' template must contain {{question}}")
    return ThemeTemplate(name=name, path=path, description=data.get("description", "").strip(), **fields)


class PromptManager:
    """Loads every theme under ``prompts_dir`` and reloads whenever a file changes.

    Each lookup hashes the directory's YAML files (a few KB: cheap) and re-parses
    them only when a name or a byte changed, so edits apply to the next request of
    a long-running process without a restart.
    """

    def __init__(self, prompts_dir: Path) -> None:
        self.prompts_dir = Path(prompts_dir)
        self._lock = threading.Lock()
        self._signature: tuple[tuple[str, str], ...] | None = None
        self._themes: dict[str, ThemeTemplate] = {}
        self._errors: dict[str, PromptTemplateError] = {}

    def _files(self) -> list[Path]:
        if not self.prompts_dir.is_dir():
            raise PromptTemplateError(f"prompts directory {self.prompts_dir} does not exist (generation.prompts_dir)")
        return sorted(p for p in self.prompts_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())

    def _current_signature(self, files: list[Path]) -> tuple[tuple[str, str], ...]:
        """(name, content hash) of every file: the files are small, so hashing is cheap and exact."""
        sig = []
        for path in files:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            sig.append((path.name, hashlib.sha256(data).hexdigest()))
        return tuple(sig)

    def refresh(self) -> bool:
        """Reload if any template file changed; True when a reload happened."""
        with self._lock:
            files = self._files()
            signature = self._current_signature(files)
            if signature == self._signature:
                return False
            self._load(files)
            self._signature = signature
            return True

    def _load(self, files: list[Path]) -> None:
        themes: dict[str, ThemeTemplate] = {}
        errors: dict[str, PromptTemplateError] = {}
        defaults_path = self.prompts_dir / f"{DEFAULTS_FILE}.yaml"
        defaults: dict[str, Any] = {}
        defaults_error: PromptTemplateError | None = None
        for path in files:
            if path.stem == DEFAULTS_FILE:
                defaults_path = path
                try:
                    defaults = _read_yaml(path)
                    for field in ("system", "context"):
                        if field in defaults:
                            _check_placeholders(path, field, defaults[field])
                    extra = sorted(set(defaults) - {"system", "context", "description"})
                    if extra:
                        raise PromptTemplateError(f"{path}: only 'system' and 'context' belong here, found {extra}")
                except PromptTemplateError as exc:
                    defaults_error = exc
        for path in files:
            name = path.stem
            if name.startswith("_"):
                continue
            if not _THEME_NAME.fullmatch(name):
                errors[name] = PromptTemplateError(f"{path}: theme file names must match [a-z0-9][a-z0-9_-]*")
                continue
            try:
                if defaults_error is not None:
                    raise defaults_error
                themes[name] = _build_theme(name, path, _read_yaml(path), defaults, defaults_path)
            except PromptTemplateError as exc:
                errors[name] = exc
        self._themes, self._errors = themes, errors
        log.debug("loaded %d prompt themes from %s (%d invalid)", len(themes), self.prompts_dir, len(errors))

    def theme(self, name: str) -> ThemeTemplate:
        """The current template of ``name`` (reloaded if its file changed)."""
        self.refresh()
        if name in self._errors:
            raise self._errors[name]
        if name not in self._themes:
            known = ", ".join(sorted(self._themes)) or "none"
            raise PromptTemplateError(
                f"no prompt template for theme '{name}': expected {self.prompts_dir / (name + '.yaml')}"
                f" (available: {known})"
            )
        return self._themes[name]

    def themes(self) -> list[str]:
        """Names of the valid themes on disk."""
        self.refresh()
        return sorted(self._themes)

    def errors(self) -> dict[str, PromptTemplateError]:
        """Invalid theme files by theme name (for ``config validate``)."""
        self.refresh()
        return dict(self._errors)

    def validate(self, themes: list[str]) -> None:
        """Raise the first problem among ``themes`` (all must exist and be valid)."""
        for name in themes:
            self.theme(name)


_MANAGERS: dict[Path, PromptManager] = {}
_MANAGERS_LOCK = threading.Lock()


def prompt_manager(prompts_dir: Path) -> PromptManager:
    """A process-wide manager per directory (it reloads itself when files change)."""
    key = Path(prompts_dir).resolve()
    with _MANAGERS_LOCK:
        manager = _MANAGERS.get(key)
        if manager is None:
            manager = _MANAGERS[key] = PromptManager(key)
        return manager


def _shipped_prompts_dir() -> Path:
    """The installed package data (``cicdllm_assets/default_prompts`` in the wheel), else the
    checkout's top-level ``prompts/`` (running from source or an editable install)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "default_prompts"
    return installed if installed.is_dir() else package.parent / "prompts"


SHIPPED_PROMPTS_DIR = _shipped_prompts_dir()
"""The templates that ship with cicdllm (the repository's top-level ``prompts/``)."""

DEFAULT_PROMPTS_SETTING = "prompts"


def resolve_prompts_dir(generation: GenerationConfig, configured: Path) -> Path:
    """``configured`` (``generation.prompts_dir`` resolved); if left at its default and absent,
    the shipped templates."""
    if configured.is_dir():
        return configured
    if generation.prompts_dir == DEFAULT_PROMPTS_SETTING and SHIPPED_PROMPTS_DIR.is_dir():
        log.info("%s does not exist; using the shipped templates in %s", configured, SHIPPED_PROMPTS_DIR)
        return SHIPPED_PROMPTS_DIR
    return configured


def prompt_problems(generation: GenerationConfig, prompts_dir: Path) -> list[str]:
    """Every problem with the templates of the configured themes in ``prompts_dir`` (``generation.prompts_dir``
    resolved; empty = valid), for ``config validate``."""
    themes = list(generation.themes)
    manager = PromptManager(resolve_prompts_dir(generation, prompts_dir))
    problems = []
    for name in themes:
        try:
            manager.theme(name)
        except PromptTemplateError as exc:
            problems.append(str(exc))
    return problems
