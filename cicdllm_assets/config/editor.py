"""Edit ``cicdllm.yaml`` one field at a time, keeping its comments and key order.

The file is loaded with ruamel.yaml's round-trip loader, the field is set, the *whole*
resulting config is validated with the Pydantic models, and only then is the file
replaced atomically (temp file in the same directory, then rename). Nothing caches the
config, so the next materialization, sensor tick or viewer refresh sees the change.
"""

from __future__ import annotations

import io
import os
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, YAMLError
from ruamel.yaml.tokens import CommentToken

from cicdllm_assets.config.loader import ConfigError, ConfigIssue, is_secret_field, validate_mapping
from cicdllm_assets.config.models import AppConfig


@dataclass(frozen=True)
class FieldSpec:
    """One editable (leaf) field of :class:`AppConfig`."""

    path: str
    section: str
    name: str
    annotation: Any
    type_name: str
    default: Any
    description: str
    secret: bool

    def display(self, value: Any) -> str:
        """A value as the editor shows it (YAML-ish; secrets masked)."""
        if self.secret:
            return "***" if value not in (None, "") else "null"
        return format_value(value)


@dataclass(frozen=True)
class SectionSpec:
    """A config section (a nested model), with its docstring."""

    path: str
    description: str


def type_name(annotation: Any) -> str:
    """A short readable type: ``int | None``, ``list[str]``, ``'mlx' | 'openai'``."""
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(arg) for arg in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in get_args(annotation))
    if origin is not None:
        args = ", ".join(type_name(arg) for arg in get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


def iter_sections(model: type[BaseModel] = AppConfig, prefix: str = "") -> list[SectionSpec]:
    """Every nested section, depth first (``llm``, ``llm.mlx``, ``llm.openai``, ...)."""
    out: list[SectionSpec] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            path = f"{prefix}{name}"
            out.append(SectionSpec(path, (annotation.__doc__ or "").strip()))
            out.extend(iter_sections(annotation, f"{path}."))
    return out


def iter_fields(model: type[BaseModel] = AppConfig, prefix: str = "") -> list[FieldSpec]:
    """Every leaf field with type, default and description, in model order."""
    out: list[FieldSpec] = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation.__pydantic_decorators__.model_validators:
                # fields checked together (e.g. split ratios summing to 1) are also
                # editable as one mapping, so a valid change never needs two saves.
                out.append(
                    FieldSpec(
                        path=path,
                        section=prefix.rstrip("."),
                        name=name,
                        annotation=dict,
                        type_name=f"{annotation.__name__} (mapping)",
                        default=_default(info).model_dump(),
                        description=(annotation.__doc__ or "").strip(),
                        secret=False,
                    )
                )
            out.extend(iter_fields(annotation, f"{path}."))
            continue
        out.append(
            FieldSpec(
                path=path,
                section=prefix.rstrip("."),
                name=name,
                annotation=info.annotation,
                type_name=type_name(info.annotation),
                default=_default(info),
                description=info.description or "",
                secret=is_secret_field(path),
            )
        )
    return out


def field_spec(dotted_key: str) -> FieldSpec:
    """The spec of one leaf field; ``KeyError`` with the known keys' hint if unknown."""
    for spec in iter_fields():
        if spec.path == dotted_key:
            return spec
    raise KeyError(f"unknown config key {dotted_key!r} (see `cicdllm config show`)")


def get_value(config: AppConfig, dotted_key: str) -> Any:
    """The current value of a dotted key in a validated config."""
    node: Any = config
    for part in dotted_key.split("."):
        node = getattr(node, part)
    if isinstance(node, SecretStr):
        return node.get_secret_value()
    return node


def format_value(value: Any) -> str:
    """A Python value as one line of YAML flow style (``[a, b]``, ``null``, ``true``)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, SecretStr):
        return "***"
    buffer = io.StringIO()
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = True
    yaml.width = 1_000_000
    yaml.dump(value, buffer)
    text = buffer.getvalue().strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def _accepts_text(annotation: Any) -> bool:
    """True when the field is a plain (or optional) string: input is taken literally."""
    args = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return any(arg in (str, SecretStr) for arg in args)


def _optional(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


def parse_value(dotted_key: str, text: str) -> Any:
    """Turn what the user typed into a value for ``dotted_key``.

    String fields take the text literally (``null``/empty clears an optional one); every
    other field reads it as YAML (``8``, ``0.5``, ``true``, ``[jsonl, csv]``, ``null``).
    Type checking is left to the Pydantic validation of the whole config.
    """
    spec = field_spec(dotted_key)
    stripped = text.strip()
    if _optional(spec.annotation) and stripped in ("", "null", "~", "None"):
        return None
    if _accepts_text(spec.annotation) and not stripped.startswith(("[", "{")):
        return text
    try:
        return YAML(typ="safe", pure=True).load(stripped) if stripped else None
    except YAMLError as exc:
        raise ConfigError(dotted_key, [ConfigIssue(dotted_key, text, f"not a valid YAML value: {exc}")]) from exc


def _round_trip() -> YAML:
    yaml = YAML()  # round-trip: keeps comments, order, quoting and flow style
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _load_document(path: Path) -> CommentedMap:
    if not path.exists():
        return CommentedMap()
    try:
        document = _round_trip().load(path.read_text(encoding="utf-8"))
    except YAMLError as exc:
        raise ConfigError(str(path), [ConfigIssue("<file>", str(path), f"not valid YAML: {exc}")]) from exc
    if document is None:
        return CommentedMap()
    if not isinstance(document, CommentedMap):
        raise ConfigError(str(path), [ConfigIssue("<root>", type(document).__name__, "top level must be a mapping")])
    return document


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _as_node(value: Any, previous: Any) -> Any:
    """Keep a list's flow/block style when replacing it; new lists are written in flow style."""
    if isinstance(value, dict):
        mapping = CommentedMap(value)
        if not isinstance(previous, CommentedMap) or previous.fa.flow_style():
            mapping.fa.set_flow_style()
        return mapping
    if isinstance(value, list):
        seq = CommentedSeq(value)
        if not isinstance(previous, CommentedSeq) or previous.fa.flow_style():
            seq.fa.set_flow_style()
        return seq
    return value


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` via a temp file in the same directory (keeps the file mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _dump(document: CommentedMap) -> str:
    buffer = io.StringIO()
    _round_trip().dump(document, buffer)
    return buffer.getvalue()


def preview(path: str | os.PathLike[str], dotted_key: str, value: Any) -> AppConfig:
    """Validate the config that setting ``dotted_key`` would produce, without writing.

    Raises :class:`ConfigError` (every bad field, Pydantic's messages) or ``KeyError``.
    """
    document = _apply(Path(path), dotted_key, value)
    return validate_mapping(_plain(document), str(path))


# ruamel attaches the blank lines and comment lines that follow a key to that key. When a
# key is appended to (or removed from) the end of a mapping, move those trailing lines so
# section separators and the comments above the next key stay where they were.
def _tail_owner(node: Any) -> tuple[CommentedMap, Any] | None:
    """The deepest last (mapping, key) of ``node``: where its trailing lines are stored."""
    owner = None
    while isinstance(node, CommentedMap) and node and not node.fa.flow_style():
        last = next(reversed(node))
        owner = (node, last)
        node = node[last]
    return owner


def _is_flow(value: Any) -> bool:
    return isinstance(value, CommentedMap | CommentedSeq) and bool(value.fa.flow_style())


def _take_trailing(mapping: CommentedMap, key: Any) -> str | None:
    """Detach the lines after ``key``'s own line (its inline comment stays)."""
    entry = mapping.ca.items.get(key)
    token = entry[2] if entry and len(entry) > 2 else None
    if token is None:
        return None
    head, _, rest = token.value.partition("\n")
    if not rest:
        return None
    token.value = head + "\n"
    return rest


def _give_trailing(owner: tuple[CommentedMap, Any] | None, rest: str | None) -> bool:
    if owner is None or not rest:
        return False
    mapping, key = owner
    if _is_flow(mapping[key]):  # lines after a flow collection belong to the next key
        return False
    entry = mapping.ca.items.get(key)
    token = entry[2] if entry and len(entry) > 2 else None
    if token is not None:
        token.value = token.value.rstrip("\n") + "\n" + rest if token.value.strip() else token.value + rest
        return True
    new = CommentToken("\n" + rest, CommentMark(0), None)
    if entry:
        entry[2] = new
    else:
        mapping.ca.items[key] = [None, None, new, None]
    return True


def _prepend_before(mapping: CommentedMap, key: Any, tokens: list[Any]) -> None:
    slot = mapping.ca.items.setdefault(key, [None, None, None, None])
    slot[1] = list(tokens) + list(slot[1] or [])


def _set_keeping_layout(mapping: CommentedMap, key: str, value: Any) -> None:
    if key in mapping or not mapping:
        mapping[key] = value
        return
    owner = _tail_owner(mapping)
    rest = _take_trailing(*owner) if owner else None
    mapping[key] = value
    _give_trailing(_tail_owner(mapping), rest)


def _delete_keeping_layout(mapping: CommentedMap, key: str, ancestors: list[tuple[CommentedMap, str]]) -> None:
    """Delete ``key``; its surrounding comment lines move to the neighbouring keys.

    ``ancestors`` are the (mapping, key) pairs from the document root down to ``mapping``.
    """
    keys = list(mapping)
    index = keys.index(key)
    child = mapping[key]
    owner = _tail_owner(child) if isinstance(child, CommentedMap) and child else (mapping, key)
    rest = _take_trailing(*owner) if owner else None
    entry = mapping.ca.items.get(key)
    before = list(entry[1] or []) if entry and len(entry) > 1 else []
    del mapping[key]
    if rest and index > 0:
        previous = keys[index - 1]
        child = mapping[previous]
        if _give_trailing(
            _tail_owner(child) if isinstance(child, CommentedMap) and child else (mapping, previous), rest
        ):
            rest = None
    if rest:
        before.append(CommentToken(rest, CommentMark(0), None))
    if not before:
        return
    if index + 1 < len(keys):  # the lines now precede the next key
        _prepend_before(mapping, keys[index + 1], before)
        return
    for parent, part in reversed(ancestors):
        siblings = list(parent)
        position = siblings.index(part)
        if position + 1 < len(siblings):
            _prepend_before(parent, siblings[position + 1], before)
            return


def _apply(path: Path, dotted_key: str, value: Any) -> CommentedMap:
    field_spec(dotted_key)
    document = _load_document(path)
    *parents, leaf = dotted_key.split(".")
    node = document
    for index, part in enumerate(parents):
        child = node.get(part)
        if not isinstance(child, CommentedMap):
            # build the missing sections whole, then insert them once
            new: Any = _as_node(value, None)
            for name in reversed([*parents[index + 1 :], leaf]):
                new = CommentedMap({name: new})
            _set_keeping_layout(node, part, new)
            return document
        node = child
    _set_keeping_layout(node, leaf, _as_node(value, node.get(leaf)))
    return document


def set_value(path: str | os.PathLike[str], dotted_key: str, value: Any) -> AppConfig:
    """Set one field in the YAML file, validate the whole config, then write atomically.

    Comments, key order and formatting elsewhere in the file are kept. On an invalid
    value nothing is written and :class:`ConfigError` carries Pydantic's message.
    """
    target = Path(path)
    document = _apply(target, dotted_key, value)
    config = validate_mapping(_plain(document), str(target))
    _write_atomic(target, _dump(document))
    return config


def reset_value(path: str | os.PathLike[str], dotted_key: str) -> AppConfig:
    """Remove a field from the file so its default applies (validated, atomic)."""
    target = Path(path)
    field_spec(dotted_key)
    document = _load_document(target)
    *parents, leaf = dotted_key.split(".")
    chain: list[tuple[CommentedMap, str]] = []
    node = document
    for part in parents:
        child = node.get(part)
        if not isinstance(child, CommentedMap):
            return validate_mapping(_plain(document), str(target))
        chain.append((node, part))
        node = child
    if leaf in node:
        owner, key, depth = node, leaf, len(chain)
        for parent, part in reversed(chain):  # a section left empty goes too
            if len(owner) > 1:
                break
            owner, key, depth = parent, part, depth - 1
        _delete_keeping_layout(owner, key, chain[:depth])
    config = validate_mapping(_plain(document), str(target))
    _write_atomic(target, _dump(document))
    return config
