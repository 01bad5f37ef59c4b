"""The configuration editor: round-trip YAML edits validated by the Pydantic models."""

from __future__ import annotations

import asyncio
import shutil
import stat
from pathlib import Path

import pytest
from textual.widgets import Input

from cicdllm_assets.config import ConfigError, Settings, load_settings
from cicdllm_assets.config.editor import field_spec, iter_fields, parse_value, reset_value, set_value
from cicdllm_assets.tui.app import ConfigEditorApp
from cicdllm_assets.tui.screens import ConfigScreen
from cicdllm_assets.tui.widgets import StaticPanel

SHIPPED = Path(__file__).resolve().parents[1] / "cicdllm.yaml"


@pytest.fixture
def config_file(settings: Settings) -> Path:
    """The shipped, commented cicdllm.yaml, pointed at the test project's data dirs."""
    assert settings.path is not None
    text = SHIPPED.read_text(encoding="utf-8")
    text = text.replace("data_dir: .cicdllm ", "data_dir: data     ").replace(
        "dagster_home: .dagster_home ", "dagster_home: dagster_home "
    )
    settings.path.write_text(text, encoding="utf-8")
    settings.path.chmod(0o640)
    return settings.path


def comments(text: str) -> list[str]:
    return [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]


def keys(text: str) -> list[str]:
    return [line.split(":", 1)[0] for line in text.splitlines() if ":" in line and not line.lstrip().startswith("#")]


def test_edit_keeps_comments_order_and_mode(config_file: Path) -> None:
    before = config_file.read_text(encoding="utf-8")
    config = set_value(config_file, "generation.batch_size", 16)
    after = config_file.read_text(encoding="utf-8")
    assert config.generation.batch_size == 16
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert changed == [("  batch_size: auto", "  batch_size: 16")]
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o640
    assert [p.name for p in config_file.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert load_settings().config.generation.batch_size == 16  # the next step re-reads it


def test_new_keys_and_sections_keep_the_layout(config_file: Path) -> None:
    before = config_file.read_text(encoding="utf-8")
    set_value(config_file, "generation.seed", 7)
    set_value(config_file, "llm.mlx.max_kv_size", 2048)
    set_value(config_file, "export.formats", ["jsonl", "csv"])
    after = config_file.read_text(encoding="utf-8")
    assert comments(after) == comments(before)
    assert "  batch_size: auto\n  seed: 7\n\nllm:" in after
    assert "    max_concurrency: 8\n  mlx:\n    max_kv_size: 2048\n\nstorage:" in after
    assert "  formats: [jsonl, csv]\n" in after
    assert keys(after)[: keys(after).index("  seed")] == keys(before)[: keys(before).index("llm")]
    reset_value(config_file, "generation.seed")
    reset_value(config_file, "llm.mlx.max_kv_size")
    set_value(
        config_file,
        "export.formats",
        ["jsonl", "csv", "parquet", "mlx_chat", "mlx_completions", "alpaca", "sharegpt", "openai"],
    )
    assert config_file.read_text(encoding="utf-8") == before


def test_invalid_value_is_refused_with_the_pydantic_message(config_file: Path) -> None:
    before = config_file.read_bytes()
    with pytest.raises(ConfigError) as err:
        set_value(config_file, "generation.temperature", 5)
    assert err.value.issues[0].path == "generation.temperature"
    assert err.value.issues[0].message == "Input should be less than or equal to 2"
    with pytest.raises(ConfigError, match=r"train \+ valid \+ test must be 1\.0"):
        set_value(config_file, "export.split.train", 0.5)
    with pytest.raises(ConfigError, match=r"Input should be 'mlx' or 'openai'"):
        set_value(config_file, "llm.backend", "vllm")
    with pytest.raises(KeyError, match="unknown config key"):
        set_value(config_file, "generation.no_such_key", 1)
    assert config_file.read_bytes() == before
    # ratios checked together are editable as one mapping
    config = set_value(config_file, "export.split", parse_value("export.split", "{train: 0.7, valid: 0.2, test: 0.1}"))
    assert config.export.split.train == 0.7
    assert "  split: {train: 0.7, valid: 0.2, test: 0.1}\n" in config_file.read_text(encoding="utf-8")


def test_field_listing_and_parsing() -> None:
    paths = [f.path for f in iter_fields()]
    assert "generation.default_max_tokens" in paths and "llm.openai.base_url" in paths and "ui.refresh_seconds" in paths
    spec = field_spec("generation.answer_max_tokens")
    assert spec.type_name == "int | None" and spec.default is None and spec.description
    assert field_spec("llm.openai.api_key").display("sk-secret") == "***"
    # every api_key is masked, the judge's own backend's too (it was shown in clear)
    secret = [f.path for f in iter_fields() if f.secret]
    assert secret == [f.path for f in iter_fields() if f.name == "api_key"] and len(secret) >= 2
    assert field_spec("quality.judge.llm.openai.api_key").display("sk-judge-secret") == "***"
    assert parse_value("generation.answer_max_tokens", "null") is None
    assert parse_value("generation.temperature", "0.3") == 0.3
    assert parse_value("llm.model", "123") == "123"  # strings stay literal
    assert parse_value("processing.extensions", "[.py, .md]") == [".py", ".md"]
    assert parse_value("processing.skip_generated", "false") is False


def test_standalone_editor_app(config_file: Path) -> None:
    async def scenario() -> None:
        app = ConfigEditorApp(config_file)
        async with app.run_test(size=(160, 45)) as pilot:
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, ConfigScreen)
            # keyboard navigation in the tree shows a field
            for _ in range(3):
                await pilot.press("down")
            await pilot.pause()
            assert screen.selected is not None
            screen.select_field("generation.default_max_tokens")
            field_input = screen.query_one(Input)
            assert field_input.value == "4096"
            field_input.focus()
            field_input.value = ""
            await pilot.press("8")  # typed: validated inline as it changes
            await pilot.pause()
            assert field_input.value == "8"
            assert (
                "Input should be greater than or equal to 16"
                in screen.query_one("#field-message", StaticPanel).plain_text
            )
            await pilot.press("enter")
            await pilot.pause()
            assert "default_max_tokens: 4096" in config_file.read_text(encoding="utf-8")
            field_input.value = "8192"
            await pilot.press("enter")
            await pilot.pause()
            text = config_file.read_text(encoding="utf-8")
            assert "  default_max_tokens: 8192       # 16 .. 100000, capped by the model's context" in text
            assert (
                "saved generation.default_max_tokens = 8192"
                in screen.query_one("#field-message", StaticPanel).plain_text
            )
            # ctrl+d resets to the default by removing the key
            screen.query_one("#config-tree").focus()
            await pilot.press("ctrl+d")
            await pilot.pause()
            assert "default_max_tokens" not in config_file.read_text(encoding="utf-8")
            await pilot.press("escape")
            await pilot.pause()
            assert not app.is_running

    asyncio.run(scenario())


def test_copy_of_shipped_config_is_valid(tmp_path: Path) -> None:
    target = tmp_path / "cicdllm.yaml"
    shutil.copy(SHIPPED, target)
    assert set_value(target, "ui.refresh_seconds", 3).ui.refresh_seconds == 3
