"""Configuration: validation, unknown keys, env overrides and the CLI exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cicdllm_assets.cli.main import cli
from cicdllm_assets.config import ConfigError, load_settings


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_when_sections_missing(project: Path) -> None:
    settings = load_settings()
    assert settings.config.generation.default_max_tokens == 4096
    assert settings.data_dir == project / "data"


def test_max_tokens_may_be_raised_to_100000_but_not_beyond(project: Path) -> None:
    write(project / "cicdllm.yaml", "generation:\n  default_max_tokens: 100000\n")
    assert load_settings().config.generation.default_max_tokens == 100000
    write(project / "cicdllm.yaml", "generation:\n  default_max_tokens: 100001\n")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.issues[0].path == "generation.default_max_tokens"


def test_unknown_keys_are_errors_with_dotted_paths(project: Path) -> None:
    write(project / "cicdllm.yaml", "llm:\n  backnd: mlx\nbogus: 1\n")
    with pytest.raises(ConfigError) as err:
        load_settings()
    paths = {issue.path for issue in err.value.issues}
    assert paths == {"llm.backnd", "bogus"}
    assert all(issue.message == "unknown key" for issue in err.value.issues)


def test_env_overrides_nested_keys(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CICDLLM_LLM__BACKEND", "openai")
    monkeypatch.setenv("CICDLLM_LLM__OPENAI__MAX_CONCURRENCY", "3")
    monkeypatch.setenv("CICDLLM_EXPORT__FORMATS", "[jsonl, csv]")
    config = load_settings().config
    assert config.llm.backend == "openai"
    assert config.llm.openai.max_concurrency == 3
    assert config.export.formats == ["jsonl", "csv"]


def test_env_override_with_unknown_key_is_an_error(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CICDLLM_GENERATION__NOPE", "1")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.issues[0].path == "generation.nope"


def test_cicdllm_config_points_at_another_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = write(tmp_path / "other.yaml", "ui:\n  refresh_seconds: 5\n")
    monkeypatch.setenv("CICDLLM_CONFIG", str(other))
    settings = load_settings()
    assert settings.path == other
    assert settings.config.ui.refresh_seconds == 5


def test_split_ratios_must_sum_to_one(project: Path) -> None:
    write(project / "cicdllm.yaml", "export:\n  split: {train: 0.9, valid: 0.2, test: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.issues[0].path == "export.split"


def test_validate_exit_codes_and_messages(project: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["config", "validate"])
    assert result.exit_code == 0, result.output
    write(project / "cicdllm.yaml", "generation:\n  temperature: hot\nllm:\n  backend: gpt\n")
    result = runner.invoke(cli, ["config", "validate"])
    assert result.exit_code == 2
    assert "generation.temperature" in result.output and "'hot'" in result.output
    assert "llm.backend" in result.output and "'gpt'" in result.output


def test_broken_yaml_is_a_clear_error(project: Path) -> None:
    write(project / "cicdllm.yaml", "generation: [unclosed\n")
    result = CliRunner().invoke(cli, ["config", "validate"])
    assert result.exit_code == 2
    assert "not valid YAML" in result.output


def test_show_masks_secrets(project: Path) -> None:
    write(project / "cicdllm.yaml", "llm:\n  openai:\n    api_key: sk-very-secret-value\n")
    result = CliRunner().invoke(cli, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert "sk-very-secret-value" not in result.output
    assert "***" in result.output


def test_configuration_reference_is_up_to_date() -> None:
    from cicdllm_assets.config.reference import render

    committed = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == render(), "run: python -m cicdllm_assets.config.reference > docs/configuration.md"


def test_shipped_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = Path(__file__).parent.parent / "cicdllm.yaml"
    monkeypatch.setenv("CICDLLM_CONFIG", str(shipped))
    settings = load_settings()
    assert settings.repos_file == shipped.parent / "repos.txt"


def test_the_config_is_parsed_once_per_version(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every load of an unchanged file (the step, the IO manager, the backend) gets the same
    Settings; an edit or another override is parsed again (hot reload)."""
    first = load_settings()
    assert load_settings() is first
    config = project / "cicdllm.yaml"
    config.write_text(config.read_text(encoding="utf-8") + "generation:\n  batch_size: 3\n", encoding="utf-8")
    edited = load_settings()
    assert edited is not first and edited.config.generation.batch_size == 3
    monkeypatch.setenv("CICDLLM_GENERATION__BATCH_SIZE", "5")
    assert load_settings().config.generation.batch_size == 5
    monkeypatch.delenv("CICDLLM_GENERATION__BATCH_SIZE")
    assert load_settings() is edited
