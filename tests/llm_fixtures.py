"""A tiny randomly initialised llama model directory for tests (no network, < 1 s).

``make_tiny_model_dir(path)`` writes config.json, model.safetensors, tokenizer.json,
tokenizer_config.json (ChatML template, eos ``<|im_end|>``) that ``mlx_lm.load`` and
``mlx_lm.server`` accept. Import the session fixture with
``from tests.llm_fixtures import tiny_model_dir``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "class Parser:\n    def parse(self, text: str) -> list[str]:\n        return text.split()\n",
    "What does this function return? It returns the sum of its two arguments.",
    "import os\nimport sys\n\nfor name in os.listdir('.'):\n    print(name)\n",
    "Question: Why is the cache copied? Answer: so each request can extend it.",
    "You are a helpful assistant that writes questions and answers about code.",
    "The quick brown fox jumps over the lazy dog. 0123456789 {}[]()<>=+-*/#\"'",
]

TINY_CONFIG: dict[str, object] = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_traditional": False,
    "tie_word_embeddings": True,
    "max_position_embeddings": 2048,
    "torch_dtype": "float32",
}


def _build_tokenizer_json() -> tuple[str, int]:
    """Byte-level BPE trained on a few strings; returns (tokenizer.json text, vocab size)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tokenizer.to_str(), tokenizer.get_vocab_size()


def make_tiny_model_dir(path: Path, seed: int = 0) -> Path:
    """Write a tiny random llama + ChatML tokenizer model directory at ``path``; return it."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer_json, vocab_size = _build_tokenizer_json()
    (path / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    eos_id = json.loads(tokenizer_json)["model"]["vocab"]["<|im_end|>"]
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "chat_template": CHATML_TEMPLATE,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    (path / "special_tokens_map.json").write_text(
        json.dumps({k: tokenizer_config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}),
        encoding="utf-8",
    )

    config = dict(TINY_CONFIG, vocab_size=vocab_size, eos_token_id=eos_id, bos_token_id=eos_id - 1)
    (path / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    rng = np.random.default_rng(seed)
    hidden = int(TINY_CONFIG["hidden_size"])  # type: ignore[call-overload]
    inter = int(TINY_CONFIG["intermediate_size"])  # type: ignore[call-overload]
    head_dim = int(TINY_CONFIG["head_dim"])  # type: ignore[call-overload]
    n_heads = int(TINY_CONFIG["num_attention_heads"])  # type: ignore[call-overload]
    n_kv = int(TINY_CONFIG["num_key_value_heads"])  # type: ignore[call-overload]

    def dense(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.08).astype(np.float32)

    weights: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": dense(vocab_size, hidden),
        "model.norm.weight": np.ones(hidden, dtype=np.float32),
    }
    for i in range(int(TINY_CONFIG["num_hidden_layers"])):  # type: ignore[call-overload]
        p = f"model.layers.{i}."
        weights.update(
            {
                p + "self_attn.q_proj.weight": dense(n_heads * head_dim, hidden),
                p + "self_attn.k_proj.weight": dense(n_kv * head_dim, hidden),
                p + "self_attn.v_proj.weight": dense(n_kv * head_dim, hidden),
                p + "self_attn.o_proj.weight": dense(hidden, n_heads * head_dim),
                p + "mlp.gate_proj.weight": dense(inter, hidden),
                p + "mlp.up_proj.weight": dense(inter, hidden),
                p + "mlp.down_proj.weight": dense(hidden, inter),
                p + "input_layernorm.weight": np.ones(hidden, dtype=np.float32),
                p + "post_attention_layernorm.weight": np.ones(hidden, dtype=np.float32),
            }
        )
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "mlx"})
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A session-wide tiny random model directory (see :func:`make_tiny_model_dir`)."""
    yield make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model") / "model")


SCRIPTED_REPLY = "What does add return?"


def make_scripted_model_dir(path: Path, reply: str = SCRIPTED_REPLY) -> Path:
    """A tiny llama (saved with mlx) that answers every chat prompt with ``reply`` then ``<|im_end|>``.

    A bigram model: attention and MLP outputs are zero, so the next token depends only on the
    current one; one-hot embeddings and an untied ``lm_head`` map each token of ``reply`` to the
    next, ``?`` to ``<|im_end|>`` and every other token to the reply's first. ``reply`` must
    encode to distinct tokens. Real mlx-lm code (load, batching, sampling) runs it like any model.
    """
    import mlx.core as mx
    from tokenizers import Tokenizer

    make_tiny_model_dir(path)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    chain = tokenizer.encode(reply, add_special_tokens=False).ids
    assert len(set(chain)) == len(chain), f"{reply!r} repeats a token"
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    vocab = int(config["vocab_size"])
    eos = int(config["eos_token_id"])
    hidden = -(-vocab // 16) * 16
    config.update(hidden_size=hidden, tie_word_embeddings=False)
    (path / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    following = {token: nxt for token, nxt in zip(chain, [*chain[1:], eos], strict=True)}
    lm_head = np.zeros((vocab, hidden), dtype=np.float32)
    for token in range(vocab):
        lm_head[following.get(token, chain[0]), token] = 5.0
    head_dim, n_heads, n_kv = 16, int(config["num_attention_heads"]), int(config["num_key_value_heads"])
    inter = int(config["intermediate_size"])
    zeros = np.zeros
    weights = {
        "model.embed_tokens.weight": np.eye(vocab, hidden, dtype=np.float32),
        "model.norm.weight": np.ones(hidden, dtype=np.float32),
        "lm_head.weight": lm_head,
    }
    for i in range(int(config["num_hidden_layers"])):
        p = f"model.layers.{i}."
        weights.update(
            {
                p + "self_attn.q_proj.weight": zeros((n_heads * head_dim, hidden), np.float32),
                p + "self_attn.k_proj.weight": zeros((n_kv * head_dim, hidden), np.float32),
                p + "self_attn.v_proj.weight": zeros((n_kv * head_dim, hidden), np.float32),
                p + "self_attn.o_proj.weight": zeros((hidden, n_heads * head_dim), np.float32),
                p + "mlp.gate_proj.weight": zeros((inter, hidden), np.float32),
                p + "mlp.up_proj.weight": zeros((inter, hidden), np.float32),
                p + "mlp.down_proj.weight": zeros((hidden, inter), np.float32),
                p + "input_layernorm.weight": np.ones(hidden, dtype=np.float32),
                p + "post_attention_layernorm.weight": np.ones(hidden, dtype=np.float32),
            }
        )
    mx.save_safetensors(
        str(path / "model.safetensors"), {k: mx.array(v) for k, v in weights.items()}, metadata={"format": "mlx"}
    )
    return path


STARTUP_DEADLINE_SECONDS = 180.0


@contextmanager
def serve_mlx_model(model: str, workdir: Path, hf_home: Path | None = None, max_tokens: int = 16) -> Iterator[str]:
    """Run ``mlx_lm.server --model MODEL`` on a free loopback port (offline, HF cache at ``hf_home``
    or an empty one in ``workdir``); yield its /v1 URL once it answers; always terminate it."""
    import os
    import sys

    from tests.openai_helpers import free_port, running_server

    home = hf_home or workdir / "server-hf"
    (home / "hub").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "mlx_lm.server", "--model", model, "--max-tokens", str(max_tokens)]
    port = free_port()
    with running_server(command, port, workdir / f"mlx_server_{port}.log", env, STARTUP_DEADLINE_SECONDS) as url:
        yield url
