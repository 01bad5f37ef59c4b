"""A tiny randomly initialised llama model directory for tests (no network, < 1 s).

``make_tiny_model_dir(path)`` writes config.json, model.safetensors, tokenizer.json,
tokenizer_config.json (ChatML template, eos ``<|im_end|>``) that ``mlx_lm.load`` and
``mlx_lm.server`` accept. Import the session fixture with
``from tests.llm_fixtures import tiny_model_dir``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
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
    """A tiny llama that always writes ``reply`` then ``<|im_end|>``, through the real mlx-lm path.

    The layers' output projections are zero, so the last hidden state is the current token's
    embedding and the model is a bigram table: ``lm_head`` maps each token of the generation
    prompt's end and of ``reply`` to the next one. ``reply`` must tokenize to distinct tokens.
    """
    from safetensors.numpy import load_file, save_file
    from tokenizers import Tokenizer

    make_tiny_model_dir(path)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    start = tokenizer.encode("<|im_start|>assistant\n").ids[-1]
    chain = [start, *tokenizer.encode(reply).ids, tokenizer.token_to_id("<|im_end|>")]
    if len(set(chain)) != len(chain):
        raise ValueError(f"{reply!r} repeats a token; a bigram model cannot write it")
    weights = load_file(str(path / "model.safetensors"))
    for name in list(weights):
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = np.zeros_like(weights[name])
    embed = weights["model.embed_tokens.weight"]
    head = np.zeros_like(embed)
    for current, following in itertools.pairwise(chain):
        head[following] += 20.0 * embed[current] / np.linalg.norm(embed[current])
    weights["lm_head.weight"] = head
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "mlx"})
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    config["tie_word_embeddings"] = False
    (path / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def scripted_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A session-wide model directory that always replies :data:`SCRIPTED_REPLY`."""
    yield make_scripted_model_dir(tmp_path_factory.mktemp("scripted-model") / "model")
