"""Render the configuration reference (docs/configuration.md) from the Pydantic models.

Run ``python -m cicdllm_assets.config.reference > docs/configuration.md``; a test keeps
the committed file in sync, so the docs never drift from the code.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from cicdllm_assets.config.models import AppConfig

HEADER = """# Configuration reference

`cicdllm.yaml` (or the file named by `CICDLLM_CONFIG`) is validated by Pydantic models:
unknown keys are errors, and `cicdllm config validate` prints each bad field's dotted
path, the value and why (exit 2). Relative paths are resolved against the directory of
the config file. Every key can be overridden from the environment with
`CICDLLM_<SECTION>__<KEY>` (nested: `CICDLLM_LLM__OPENAI__BASE_URL`); values are read as
YAML, so `CICDLLM_EXPORT__FORMATS='[jsonl, parquet]'` works. `cicdllm config show` prints
the effective configuration with secrets masked. Changes are picked up by the next
materialization without restarting anything, except `llm.backend`, `repos.refresh_cron`
and `repos.sensor_interval_seconds`: they shape the code location and are read when it
loads (`cicdllm run` loads it every time; `dagster dev` needs a reload).

This file is generated from `cicdllm_assets/config/models.py`.
"""


def _type_name(info: FieldInfo) -> str:
    text = repr(info.annotation).replace("typing.", "")
    for noise in ("<class '", "'>", "pydantic.types.", "cicdllm_assets.config.models."):
        text = text.replace(noise, "")
    return text


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return None
        return value
    return info.default


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows: list[str] = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested.append((f"{prefix}{name}", annotation))
            continue
        default = json.dumps(_default(info), default=str)
        if len(default) > 60:
            default = default[:57] + "..."
        description = (info.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | `{_type_name(info)}` | `{default}` | {description} |")
    for path, sub in nested:
        rows.append(f"| **`{path}`** | section | | {(sub.__doc__ or '').strip()} |")
        rows.extend(_rows(sub, f"{path}."))
    return rows


def render() -> str:
    """The whole reference as Markdown."""
    parts = [HEADER]
    for section, info in AppConfig.model_fields.items():
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)  # noqa: S101
        parts.append(f"\n## `{section}`\n\n{(model.__doc__ or '').strip()}\n")
        parts.append("| key | type | default | meaning |\n|---|---|---|---|")
        parts.extend(_rows(model, f"{section}."))
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(render())
