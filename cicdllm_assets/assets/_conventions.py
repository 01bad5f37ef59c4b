"""Dagster conventions shared by every asset: owners, column schemas, code versions, table metadata.

* ``dagster/column_schema`` (a :class:`TableSchema` built from the asset's pyarrow schema)
  is definition metadata, so the Columns tab is filled before the first run.
* ``dagster/row_count`` (rows of the whole table, all partitions), ``dagster/partition_row_count``
  and ``dagster/uri`` (where the table lives) are added to every materialization by the IO
  manager (``io_managers.parquet_io_manager.table_location_metadata``); ``training_dataset``
  sets its own (exported pairs, export dir) because its table is the exported dataset, not the summary it returns.
* Code versions are derived from the code: a digest of the source files that decide an
  asset's output and, for ``questions``/``answers``, of the prompt template hashes of the
  configured themes. Editing that code or a template changes the version Dagster shows.
  The prompt part depends on the config, so it is added when the code location is built from
  its settings (:func:`with_prompt_versions`), never read from the config at import time.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from dagster import AssetsDefinition, AssetSpec, TableColumn, TableColumnConstraints, TableSchema

from cicdllm_assets.io_managers.parquet_io_manager import ROW_COUNT, URI

if TYPE_CHECKING:
    from cicdllm_assets.config import Settings

log = logging.getLogger(__name__)

__all__ = ["OWNERS", "ROW_COUNT", "URI", "code_version", "column_schema", "table_definition_metadata"]

OWNERS = ["team:cicdllm"]
PACKAGE_DIR = Path(__file__).resolve().parents[1]
COLUMN_SCHEMA = "dagster/column_schema"

PromptKind = Literal["question", "answer"]
PROMPT_VERSIONED: dict[str, PromptKind] = {}
"""Asset name -> the prompt templates its code version follows (registered by :func:`code_version`)."""


def column_schema(schema: pa.Schema) -> TableSchema:
    """The Dagster column schema of a pyarrow schema (names, arrow types, nullability)."""
    return TableSchema(
        columns=[
            TableColumn(name=f.name, type=str(f.type), constraints=TableColumnConstraints(nullable=f.nullable))
            for f in schema
        ]
    )


def table_definition_metadata(schema: pa.Schema) -> dict[str, Any]:
    """Definition metadata of a table asset: its column schema."""
    return {COLUMN_SCHEMA: column_schema(schema)}


def _digest(parts: Iterable[bytes]) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(hashlib.sha256(part).digest())
    return sha.hexdigest()[:12]


def source_digest(*relative: str) -> str:
    """Digest of the package's source files under ``relative`` paths (files or packages), sorted."""
    files: list[Path] = []
    for rel in relative:
        path = PACKAGE_DIR / rel
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return _digest(f"{f.relative_to(PACKAGE_DIR).as_posix()}\0".encode() + f.read_bytes() for f in files)


def prompt_digest(kind: PromptKind, settings: Settings | None = None) -> str:
    """Digest of the question (or answer) template hashes of the configured themes.

    Read from the prompts directory ``settings`` (None: the current config, loaded now) resolve
    to (the shipped templates without a valid config); a template that does not load
    contributes its error, so the version still moves.
    """
    from cicdllm_assets.config import ConfigError, load_settings
    from cicdllm_assets.generation.prompts import (
        SHIPPED_PROMPTS_DIR,
        PromptManager,
        PromptTemplateError,
        resolve_prompts_dir,
    )

    themes: list[str] | None
    try:
        settings = settings or load_settings()
        generation = settings.config.generation
        prompts_dir, themes = resolve_prompts_dir(generation, settings.prompts_dir), list(generation.themes)
    except ConfigError as exc:
        log.debug("code versions use the shipped prompt templates: %s", exc)
        prompts_dir, themes = SHIPPED_PROMPTS_DIR, None
    manager = PromptManager(prompts_dir)
    if themes is None:
        themes = manager.themes()
    parts = []
    for name in sorted(themes):
        try:
            theme = manager.theme(name)
            parts.append(f"{name}={theme.question_hash if kind == 'question' else theme.answer_hash}".encode())
        except PromptTemplateError as exc:
            parts.append(f"{name}!{exc}".encode())
    return _digest(parts)


def code_version(name: str, *sources: str, prompts: PromptKind | None = None) -> str:
    """``<name>-s<source digest>``; with ``prompts``, the asset is registered so that
    :func:`with_prompt_versions` appends ``-p<prompt digest>`` of the code location's settings."""
    if prompts:
        PROMPT_VERSIONED[name] = prompts
    return f"{name}-s{source_digest(*sources)}"


def with_prompt_versions(asset: AssetsDefinition, settings: Settings) -> AssetsDefinition:
    """``asset`` with ``-p<prompt digest>`` (templates of ``settings``) appended to the code version
    of each spec :func:`code_version` registered; other assets are returned as they are."""
    names = {spec.key.path[-1] for spec in asset.specs} & PROMPT_VERSIONED.keys()
    if not names:
        return asset
    digests = {kind: prompt_digest(kind, settings) for kind in {PROMPT_VERSIONED[name] for name in names}}

    def versioned(spec: AssetSpec) -> AssetSpec:
        kind = PROMPT_VERSIONED.get(spec.key.path[-1])
        if kind is None or spec.code_version is None:
            return spec
        return spec.replace_attributes(code_version=f"{spec.code_version}-p{digests[kind]}")

    return asset.map_asset_specs(versioned)


def repo_table_asset(
    group: str, version: str, kinds: set[str], schema: pa.Schema, description: str, **extra: Any
) -> Any:
    """The ``@asset`` decorator of a per-repository table asset: partitioned by repo, owned,
    its column schema as definition metadata (``extra``: more ``@asset`` arguments)."""
    from dagster import asset

    from cicdllm_assets.partitions import repos_partitions

    return asset(
        partitions_def=repos_partitions,
        group_name=group,
        code_version=version,
        kinds=kinds,
        owners=OWNERS,
        metadata=table_definition_metadata(schema),
        description=description,
        **extra,
    )
