"""Load ``cicdllm.yaml``: file, then ``CICDLLM_<SECTION>__<KEY>`` overrides, then validation.

``CICDLLM_CONFIG`` names another file. Relative paths in the file are resolved against
the file's directory, so the project works from any working directory.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from cicdllm_assets.config.models import AppConfig, LLMConfig
from cicdllm_assets.errors import CONFIG, CicdllmError

CONFIG_ENV = "CICDLLM_CONFIG"
ENV_PREFIX = "CICDLLM_"
DEFAULT_CONFIG_NAME = "cicdllm.yaml"
_SECRET_FIELDS = frozenset({"api_key"})


def is_secret_field(path: str) -> bool:
    """True for a dotted config path whose value is a secret (any ``api_key``, the judge's too)."""
    return path.rsplit(".", 1)[-1] in _SECRET_FIELDS


@dataclass(frozen=True)
class ConfigIssue:
    """One invalid field: dotted path, offending value and reason."""

    path: str
    value: Any
    message: str

    def render(self) -> str:
        """One line for the terminal; secret values are masked."""
        shown = "***" if is_secret_field(self.path) else repr(self.value)
        return f"{self.path}: {self.message} (got {shown})"


class ConfigError(CicdllmError, category=CONFIG, permanent=True):
    """The configuration could not be loaded; ``issues`` lists every bad field."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        lines = "\n".join(f"  - {issue.render()}" for issue in issues)
        super().__init__(f"invalid configuration in {source}:\n{lines}")


def resolve_path(root: Path, value: str | os.PathLike[str]) -> Path:
    """``value`` as a path: ``~`` expanded, relative ones resolved against ``root``."""
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else (root / candidate).resolve()


@dataclass(frozen=True)
class ModelPaths:
    """What model and tokenizer resolution reads: the ``llm`` section, ``processing.tokenizer``,
    the prepared-models directory and the directory relative config paths refer to."""

    llm: LLMConfig
    tokenizer: str
    models_dir: Path
    root: Path

    def resolve(self, value: str | os.PathLike[str]) -> Path:
        """Resolve a config path against the config file's directory."""
        return resolve_path(self.root, value)


@dataclass(frozen=True)
class Settings:
    """A validated config together with the directory its relative paths refer to."""

    config: AppConfig
    path: Path | None
    root: Path

    def resolve(self, value: str | os.PathLike[str]) -> Path:
        """Resolve a config path against the config file's directory."""
        return resolve_path(self.root, value)

    @property
    def data_dir(self) -> Path:
        """Root of everything cicdllm writes (tables, ledger, clones, models)."""
        return self.resolve(self.config.storage.data_dir)

    @property
    def repos_file(self) -> Path:
        """The repos.txt this project reads."""
        return self.resolve(self.config.repos.file)

    @property
    def cache_dir(self) -> Path:
        """Clone cache."""
        if self.config.repos.cache_dir:
            return self.resolve(self.config.repos.cache_dir)
        return self.data_dir / "repos"

    @property
    def tables_dir(self) -> Path:
        """One Parquet file per asset partition lives below this."""
        return self.data_dir / "tables"

    @property
    def state_db(self) -> Path:
        """SQLite (WAL) ledger and live state."""
        return self.data_dir / "state.db"

    @property
    def state_target(self) -> str | Path:
        """Where the state store lives: ``storage.state_url`` (Postgres) or :attr:`state_db`."""
        return self.config.storage.state_url or self.state_db

    @property
    def models_dir(self) -> Path:
        """Prepared model directories (``cicdllm model prepare``)."""
        return self.data_dir / "models"

    @property
    def model_paths(self) -> ModelPaths:
        """The pieces model and tokenizer resolution reads (:mod:`cicdllm_assets.llm.models.paths`)."""
        return ModelPaths(self.config.llm, self.config.processing.tokenizer, self.models_dir, self.root)

    @property
    def adapters_dir(self) -> Path:
        """LoRA adapters root: ``finetune.out_dir`` or ``<data_dir>/adapters``."""
        out_dir = self.config.finetune.out_dir
        return self.resolve(out_dir) if out_dir else self.data_dir / "adapters"

    @property
    def prompts_dir(self) -> Path:
        """Theme prompt templates."""
        return self.resolve(self.config.generation.prompts_dir)

    @property
    def export_dir(self) -> Path:
        """Where training_dataset writes its files."""
        return self.resolve(self.config.export.out_dir)

    @property
    def dagster_home(self) -> Path:
        """DAGSTER_HOME if set, else the project-local one from the config."""
        env = os.environ.get("DAGSTER_HOME")
        return Path(env) if env else self.resolve(self.config.storage.dagster_home)


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to read: explicit, ``$CICDLLM_CONFIG``, or ./cicdllm.yaml upwards."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser().resolve()
    here = Path.cwd().resolve()
    for directory in (here, *here.parents):
        candidate = directory / DEFAULT_CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML file whose top level must be a mapping (empty file = empty mapping)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [ConfigIssue("<file>", str(path), f"cannot read: {exc.strerror}")]) from exc
    try:
        data = YAML(typ="safe").load(text)
    except YAMLError as exc:
        raise ConfigError(str(path), [ConfigIssue("<file>", str(path), f"not valid YAML: {exc}")]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [ConfigIssue("<root>", type(data).__name__, "top level must be a mapping")])
    return data


def _parse_env_value(raw: str) -> Any:
    """Env values are YAML scalars or flow collections: ``8``, ``true``, ``[jsonl, csv]``."""
    try:
        return YAML(typ="safe").load(raw)
    except YAMLError:
        return raw


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Apply ``CICDLLM_<SECTION>__<KEY>[__<SUBKEY>]`` variables onto ``data`` (a copy)."""
    merged: dict[str, Any] = {key: (dict(value) if isinstance(value, dict) else value) for key, value in data.items()}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name or name == CONFIG_ENV:
            continue
        parts = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        node = merged
        for part in parts[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[parts[-1]] = _parse_env_value(raw)
    return merged


def _issues_from(error: ValidationError, data: Mapping[str, Any]) -> list[ConfigIssue]:
    issues = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        issues.append(ConfigIssue(path or "<root>", item.get("input"), message))
    return issues


def validate_mapping(data: Mapping[str, Any], source: str) -> AppConfig:
    """Validate a raw mapping, raising :class:`ConfigError` with every bad field."""
    try:
        return AppConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(source, _issues_from(exc, data)) from exc


_CACHE_SIZE = 8
_cache: OrderedDict[tuple[Any, ...], Settings] = OrderedDict()
_cache_lock = threading.Lock()


def _file_signature(path: Path | None) -> tuple[Any, ...]:
    """What identifies one version of the config file: its path and a digest of its bytes
    (reading is cheap; parsing and validating is what the cache saves)."""
    if path is None:
        return ()
    try:
        return (str(path), hashlib.sha256(path.read_bytes()).hexdigest())
    except OSError:
        return (str(path), None)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Load, override from the environment and validate. Missing file = defaults.

    Parsed once per process and config version: a repeated call with the same file content,
    the same ``CICDLLM_*`` variables and working directory returns the same :class:`Settings`;
    an edited file is parsed again on the next call (hot reload).
    """
    env = os.environ if environ is None else environ
    config_path = find_config_path(path)
    overrides = tuple(sorted((k, v) for k, v in env.items() if k.startswith(ENV_PREFIX)))
    key = (str(path) if path is not None else None, _file_signature(config_path), overrides, os.getcwd())
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            return cached
    settings = _load_settings(path, config_path, env)
    with _cache_lock:
        _cache[key] = settings
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return settings


def _load_settings(path: str | os.PathLike[str] | None, config_path: Path | None, env: Mapping[str, str]) -> Settings:
    if config_path is not None and not config_path.exists():
        if path is not None or env.get(CONFIG_ENV):
            raise ConfigError(str(config_path), [ConfigIssue("<file>", str(config_path), "file does not exist")])
        config_path = None
    data = read_yaml_mapping(config_path) if config_path else {}
    data = apply_env_overrides(data, env)
    source = str(config_path) if config_path else "<defaults>"
    config = validate_mapping(data, source)
    root = config_path.parent if config_path else Path.cwd().resolve()
    return Settings(config=config, path=config_path, root=root)


def masked_dump(config: AppConfig) -> dict[str, Any]:
    """The effective config as plain data with secrets masked."""
    data = config.model_dump(mode="json")
    secret = config.llm.openai.api_key
    data["llm"]["openai"]["api_key"] = "***" if secret is not None else None
    return data
