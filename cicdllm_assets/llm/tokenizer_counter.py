"""Token counts with a model's ``tokenizer.json`` (no transformers needed): the chunker's
budget checks and a served model's exact prompt and completion counts.

Chat prompts are counted after the model's chat template (``chat_template`` in the
``tokenizer_config.json`` beside ``tokenizer.json``, rendered with a sandboxed jinja2
environment the way ``transformers`` does). When no template is available the count is
the sum of the messages' content tokens plus a fixed overhead of
:data:`MESSAGE_OVERHEAD_TOKENS` per message and :data:`REPLY_PRIMER_TOKENS` for the
assistant reply header (the ChatML shape: ``<|im_start|>role\\n ... <|im_end|>\\n``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import Encoding, Tokenizer

from cicdllm_assets.errors import TOKENIZER, CicdllmError
from cicdllm_assets.llm.base import ChatMessage

logger = logging.getLogger(__name__)

MESSAGE_OVERHEAD_TOKENS = 4
"""Per-message tokens added when no chat template is available (role + delimiters)."""

REPLY_PRIMER_TOKENS = 3
"""Tokens of the assistant reply header added when no chat template is available."""


class TokenizerLoadError(CicdllmError, ValueError, category=TOKENIZER, permanent=True):
    """tokenizer.json (or its chat template) could not be read."""


def _special_token_text(value: object) -> str:
    """tokenizer_config stores special tokens as strings or as AddedToken dicts."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return ""


def _pick_template(raw: object) -> str | None:
    """``chat_template`` is a string or a list of ``{"name", "template"}`` (use "default")."""
    if isinstance(raw, str) and raw.strip():
        return raw
    if isinstance(raw, list):
        named = {item.get("name"): item.get("template") for item in raw if isinstance(item, dict)}
        chosen = named.get("default") or next((t for t in named.values() if isinstance(t, str)), None)
        return chosen if isinstance(chosen, str) else None
    return None


class TokenCounter:
    """Counts tokens of text and of chat prompts with one ``tokenizer.json``.

    ``tokenizer_path`` is the file or the directory holding it. ``identity`` hashes the file
    so caches key on it; ``calls`` / ``texts_encoded`` / ``chars_encoded`` count every encode
    performed through this object (tests prove a cached blob is never tokenized again). The
    chat template (``tokenizer_config.json`` or ``chat_template.jinja`` beside the file) is
    read on first use. Thread-safe: the Rust tokenizer is shared, rendering holds no state.
    """

    def __init__(self, tokenizer_path: Path) -> None:
        tokenizer_path = Path(tokenizer_path)
        path = tokenizer_path / "tokenizer.json" if tokenizer_path.is_dir() else tokenizer_path
        if not path.is_file():
            raise TokenizerLoadError(f"no tokenizer.json at {path}")
        try:
            raw = path.read_bytes()
            tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
        except Exception as exc:  # OSError, UnicodeDecodeError, or the Rust side's bare Exception
            raise TokenizerLoadError(f"cannot load tokenizer from {path}: {exc}") from exc
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.path = path
        self.tokenizer = tokenizer
        self.identity = hashlib.sha256(raw).hexdigest()[:16]
        self._lock = threading.Lock()
        self.calls = 0
        self.texts_encoded = 0
        self.chars_encoded = 0
        self._template_loaded = False
        self._template: Any = None
        self._template_vars: dict[str, str] = {}
        self._template_source: str | None = None

    # ------------------------------------------------------------------ plain text
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
        """Token counts of many texts (no offsets computed, no special tokens added)."""
        if not texts:
            return []
        self._count_call(texts)
        return [len(e.ids) for e in self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]

    def count(self, text: str) -> int:
        """Token count of one text (no special tokens added)."""
        return self.count_batch([text])[0]

    # ------------------------------------------------------------------ chat prompts
    def _chat_template(self) -> Any:
        with self._lock:
            if not self._template_loaded:
                self._load_chat_template(self.path.parent / "tokenizer_config.json")
                self._template_loaded = True
        return self._template

    def _load_chat_template(self, config_path: Path) -> None:
        template_text: str | None = None
        config: dict[str, Any] = {}
        if config_path.is_file():
            try:
                loaded = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                logger.warning("ignoring unreadable %s: %s", config_path, exc)
                loaded = {}
            config = loaded if isinstance(loaded, dict) else {}
            template_text = _pick_template(config.get("chat_template"))
        jinja_file = config_path.parent / "chat_template.jinja"
        if template_text is None and jinja_file.is_file():
            template_text = jinja_file.read_text(encoding="utf-8")
        if template_text is None:
            logger.info(
                "no chat template beside %s: prompt counts add %d tokens per message + %d",
                self.path,
                MESSAGE_OVERHEAD_TOKENS,
                REPLY_PRIMER_TOKENS,
            )
            return
        self._template = _compile_template(template_text)
        self._template_source = str(config_path if config.get("chat_template") else jinja_file)
        self._template_vars = {
            name: _special_token_text(config.get(name)) for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        }

    @property
    def has_chat_template(self) -> bool:
        """True when prompt counts use the model's own chat template."""
        return self._chat_template() is not None

    @property
    def template_source(self) -> str | None:
        """The file the chat template was read from (None without one)."""
        self._chat_template()
        return self._template_source

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str | None:
        """The chat template applied to ``messages`` with the generation prompt, or None."""
        template = self._chat_template()
        if template is None:
            return None
        payload = [{"role": m.role, "content": m.content} for m in messages]
        rendered: str = template.render(messages=payload, add_generation_prompt=True, **self._template_vars)
        return rendered

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Prompt tokens after the chat template (or content + documented fixed overhead)."""
        rendered = self.render_prompt(messages)
        if rendered is not None:
            return self.count(rendered)
        total = sum(self.count(m.content) + MESSAGE_OVERHEAD_TOKENS for m in messages)
        return total + REPLY_PRIMER_TOKENS


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _compile_template(text: str) -> Any:
    """Compile like transformers: sandboxed, trim_blocks + lstrip_blocks, tojson, raise_exception."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **_: Any) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(text)


@lru_cache(maxsize=8)
def load_token_counter(tokenizer_path: str) -> TokenCounter:
    """A cached :class:`TokenCounter` per tokenizer path."""
    return TokenCounter(Path(tokenizer_path))
