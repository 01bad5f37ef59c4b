"""Convert a llama-architecture GGUF file into an mlx-lm model directory.

``mx.load`` reads GGUF natively: Q4_0/Q4_1/Q8_0 tensors come back as mlx affine
quantized triples (``weight`` uint32, ``scales``, ``biases``) and the metadata holds
the llama hyper-parameters, the GPT-2 style byte-level BPE vocabulary and merges, and
the chat template. Quantized matmul on mlx's CPU backend is not vectorised, so every
tensor is dequantized and stored as float (float32 by default). llama.cpp stores Q/K
in its own rotary order (interleaved pairs), which is what ``rope_traditional: true``
computes, so the weights are kept as they are.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cicdllm_assets.errors import CicdllmError
from cicdllm_assets.llm.openblas import ensure_openblas

logger = logging.getLogger(__name__)

GROUP_SIZE = 32
"""Q4_0/Q4_1/Q8_0 blocks hold 32 weights."""

_TENSOR_NAMES: list[tuple[str, str]] = [
    (r"^token_embd\.", "model.embed_tokens."),
    (r"^output_norm\.", "model.norm."),
    (r"^output\.", "lm_head."),
    (r"^blk\.(\d+)\.attn_q\.", r"model.layers.\1.self_attn.q_proj."),
    (r"^blk\.(\d+)\.attn_k\.", r"model.layers.\1.self_attn.k_proj."),
    (r"^blk\.(\d+)\.attn_v\.", r"model.layers.\1.self_attn.v_proj."),
    (r"^blk\.(\d+)\.attn_output\.", r"model.layers.\1.self_attn.o_proj."),
    (r"^blk\.(\d+)\.attn_norm\.", r"model.layers.\1.input_layernorm."),
    (r"^blk\.(\d+)\.ffn_norm\.", r"model.layers.\1.post_attention_layernorm."),
    (r"^blk\.(\d+)\.ffn_gate\.", r"model.layers.\1.mlp.gate_proj."),
    (r"^blk\.(\d+)\.ffn_up\.", r"model.layers.\1.mlp.up_proj."),
    (r"^blk\.(\d+)\.ffn_down\.", r"model.layers.\1.mlp.down_proj."),
]

# SmolLM2's pre-tokenizer (llama.cpp "smollm"): single digits, then GPT-2 byte level.
_PRE_TOKENIZER: dict[str, Any] = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ],
}
_GGUF_CONTROL = 3


class GGUFConversionError(CicdllmError, RuntimeError):
    """The GGUF file cannot be converted (unsupported architecture, tensor or tokenizer)."""


@dataclass(frozen=True)
class ConversionSummary:
    """What was written."""

    tensors: int
    parameters: int
    bits: dict[str, int]
    dtype: str
    vocab_size: int


def _scalar(meta: dict[str, Any], key: str, default: Any = None) -> Any:
    value = meta.get(key, default)
    if value is None:
        raise GGUFConversionError(f"GGUF metadata lacks {key!r}")
    if hasattr(value, "item"):
        return value.item()
    return value


def hf_tensor_name(name: str) -> str:
    """The Hugging Face llama name of a GGUF tensor (``blk.0.attn_q.weight`` -> ...)."""
    for pattern, replacement in _TENSOR_NAMES:
        new, count = re.subn(pattern, replacement, name)
        if count:
            return new
    raise GGUFConversionError(f"unsupported GGUF tensor {name!r}")


def llama_config(meta: dict[str, Any], tie_word_embeddings: bool, dtype: str) -> dict[str, Any]:
    """config.json for mlx-lm's llama model from GGUF hyper-parameters."""
    arch = _scalar(meta, "general.architecture")
    if arch != "llama":
        raise GGUFConversionError(f"only llama GGUF files are supported, got architecture {arch!r}")
    hidden = int(_scalar(meta, "llama.embedding_length"))
    heads = int(_scalar(meta, "llama.attention.head_count"))
    kv_heads = int(_scalar(meta, "llama.attention.head_count_kv", heads))
    head_dim = int(_scalar(meta, "llama.rope.dimension_count", hidden // heads))
    vocab = len(meta["tokenizer.ggml.tokens"])
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": int(_scalar(meta, "llama.feed_forward_length")),
        "num_hidden_layers": int(_scalar(meta, "llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": float(_scalar(meta, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_scalar(meta, "llama.rope.freq_base", 10000.0)),
        # GGUF keeps Q/K in llama.cpp's interleaved rotary order.
        "rope_traditional": True,
        "max_position_embeddings": int(_scalar(meta, "llama.context_length")),
        "vocab_size": vocab,
        "tie_word_embeddings": tie_word_embeddings,
        "bos_token_id": int(_scalar(meta, "tokenizer.ggml.bos_token_id", 1)),
        "eos_token_id": int(_scalar(meta, "tokenizer.ggml.eos_token_id", 2)),
        "torch_dtype": dtype,
    }
    return config


def tokenizer_files(meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tokenizer.json, tokenizer_config.json) built from the GGUF vocabulary and merges."""
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise GGUFConversionError(f"only GPT-2 style BPE tokenizers are supported, got {model!r}")
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    merges: list[str] = list(meta["tokenizer.ggml.merges"])
    types = meta.get("tokenizer.ggml.token_type")
    token_types: list[int] = types.tolist() if types is not None else [1] * len(tokens)
    added = [
        {
            "id": i,
            "content": tokens[i],
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, kind in enumerate(token_types)
        if kind == _GGUF_CONTROL
    ]
    tokenizer_json: dict[str, Any] = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": _PRE_TOKENIZER,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {token: i for i, token in enumerate(tokens)},
            "merges": [merge.split(" ", 1) for merge in merges],
        },
    }

    def token(key: str) -> str | None:
        value = meta.get(key)
        return tokens[int(value.item())] if value is not None else None

    template = meta.get("tokenizer.chat_template")
    if not isinstance(template, str) or not template:
        raise GGUFConversionError("GGUF metadata has no tokenizer.chat_template")
    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "add_bos_token": bool(_scalar(meta, "tokenizer.ggml.add_bos_token", False)),
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_scalar(meta, "llama.context_length")),
        "additional_special_tokens": [entry["content"] for entry in added],
        "chat_template": template,
    }
    return tokenizer_json, tokenizer_config


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str = "float32") -> ConversionSummary:
    """Write config.json, model.safetensors, tokenizer.json, tokenizer_config.json into ``out_dir``."""
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    ensure_openblas()
    import mlx.core as mx

    try:
        loaded: Any = mx.load(str(gguf_path), return_metadata=True)
    except Exception as exc:  # mlx raises ValueError/RuntimeError for bad files
        raise GGUFConversionError(f"cannot read GGUF file {gguf_path}: {exc}") from exc
    raw: dict[str, Any] = loaded[0]
    meta: dict[str, Any] = loaded[1]
    target = getattr(mx, dtype)
    weights: dict[str, Any] = {}
    bits: dict[str, int] = {}
    for name in sorted(raw):
        if name.endswith((".scales", ".biases")):
            continue
        tensor = raw[name]
        stem = name[: -len(".weight")] if name.endswith(".weight") else name
        scales = raw.get(stem + ".scales")
        if scales is not None:
            # Packed uint32 rows: bits per weight = 32 * packed columns / input features.
            in_features = scales.shape[-1] * GROUP_SIZE
            n_bits = tensor.shape[-1] * 32 // in_features
            if n_bits not in (2, 3, 4, 5, 6, 8):
                raise GGUFConversionError(f"{name}: cannot infer quantization bits from shape {tensor.shape}")
            biases = raw.get(stem + ".biases")
            tensor = mx.dequantize(tensor, scales, biases, group_size=GROUP_SIZE, bits=n_bits)
            bits[name] = n_bits
        weights[hf_tensor_name(name)] = tensor.astype(target)
        mx.eval(weights[hf_tensor_name(name)])
    tie = "lm_head.weight" not in weights
    config = llama_config(meta, tie_word_embeddings=tie, dtype=dtype)
    tokenizer_json, tokenizer_config = tokenizer_files(meta)
    if config["vocab_size"] != weights["model.embed_tokens.weight"].shape[0]:
        raise GGUFConversionError("vocabulary size does not match the token embedding")

    out_dir.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    special = {k: tokenizer_config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    (out_dir / "generation_config.json").write_text(
        json.dumps({"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}, indent=2),
        encoding="utf-8",
    )
    parameters = sum(int(v.size) for v in weights.values())
    logger.info("converted %s: %d tensors, %d parameters, %s", gguf_path.name, len(weights), parameters, dtype)
    return ConversionSummary(
        tensors=len(weights),
        parameters=parameters,
        bits={str(b): sum(1 for v in bits.values() if v == b) for b in sorted(set(bits.values()))},
        dtype=dtype,
        vocab_size=int(config["vocab_size"]),
    )


def write_tokenizer_from_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Write only tokenizer.json and tokenizer_config.json of ``gguf_path`` into ``out_dir``
    (atomically); return the tokenizer.json path."""
    import os
    import tempfile

    ensure_openblas()
    import mlx.core as mx

    try:
        loaded: Any = mx.load(str(gguf_path), return_metadata=True)
    except Exception as exc:  # mlx raises ValueError/RuntimeError for bad files
        raise GGUFConversionError(f"cannot read GGUF file {gguf_path}: {exc}") from exc
    tokenizer_json, tokenizer_config = tokenizer_files(loaded[1])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    (tmp / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
    (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    tmp.chmod(0o755)
    try:
        os.replace(tmp, out_dir)
    except OSError:  # another process won the race: use its copy
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / "tokenizer.json"
