"""Prompt templates: shipped themes, validation errors naming the file, hashes, hot reload, layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cicdllm_assets.config.models import DEFAULT_THEMES
from cicdllm_assets.generation.chunks import Chunk
from cicdllm_assets.generation.prompts import PREFIX_MESSAGES, PromptManager, PromptTemplateError, render
from tests.generation_support import PROMPTS_SRC

CHUNK = Chunk(
    repo="acme",
    chunk_key="k1",
    path="calc/add.py",
    start_line=1,
    end_line=3,
    text="def add(a, b):\n    return {'sum': a + b}\n",
    language="python",
    symbol="add",
)


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    target = tmp_path / "prompts"
    shutil.copytree(PROMPTS_SRC, target)
    return target


def test_shipped_themes_are_valid() -> None:
    manager = PromptManager(PROMPTS_SRC)
    assert set(DEFAULT_THEMES) <= set(manager.themes())
    assert manager.errors() == {}
    for name in DEFAULT_THEMES:
        theme = manager.theme(name)
        assert theme.description
        messages = theme.question_messages(CHUNK, 3)
        assert "numbered list" in messages[-1].content and "3" in messages[-1].content
        answer = theme.answer_messages(CHUNK, "What does add return?")
        assert "What does add return?" in answer[-1].content


def test_message_layout_puts_the_shared_prefix_first(prompts: Path) -> None:
    theme = PromptManager(prompts).theme("code_explanation")
    q = theme.question_messages(CHUNK, 2)
    a1 = theme.answer_messages(CHUNK, "What does add return?")
    a2 = PromptManager(prompts).theme("testing").answer_messages(CHUNK, "How to test add?")
    assert [m.role for m in q] == ["system", "user", "user"] and PREFIX_MESSAGES == 2
    assert "return {'sum': a + b}" in q[1].content  # literal braces in code survive
    assert q[:PREFIX_MESSAGES] == a1[:PREFIX_MESSAGES] == a2[:PREFIX_MESSAGES]  # one KV prefix per chunk
    assert "def add" not in q[2].content


def test_unknown_placeholder_names_the_file(prompts: Path) -> None:
    bad = prompts / "testing.yaml"
    bad.write_text(bad.read_text(encoding="utf-8").replace("{question}", "{question} {qestion}"), encoding="utf-8")
    manager = PromptManager(prompts)
    with pytest.raises(PromptTemplateError) as err:
        manager.theme("testing")
    message = str(err.value)
    assert str(bad) in message and "{qestion}" in message and "'answer'" in message
    assert manager.theme("debugging")  # other themes still load
    assert "testing" in manager.errors()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("question: 'Ask {n_questions}'\n", "missing or empty field 'answer'"),
        ("question: 'x'\nanswer: 'no question placeholder'\n", "must contain {question}"),
        ("question: 'x'\nanswer: '{question}'\nextra: 1\n", "unknown field"),
        ("- a list\n", "top level must be a mapping"),
        ("question: [\n", "not valid YAML"),
        ("question: 'x {question}'\nanswer: '{question}'\n", "unknown placeholder {question} in 'question'"),
    ],
)
def test_invalid_templates(prompts: Path, content: str, expected: str) -> None:
    (prompts / "broken.yaml").write_text(content, encoding="utf-8")
    with pytest.raises(PromptTemplateError, match=r"broken\.yaml") as err:
        PromptManager(prompts).theme("broken")
    assert expected in str(err.value)


def test_missing_theme_and_missing_dir(prompts: Path, tmp_path: Path) -> None:
    with pytest.raises(PromptTemplateError, match="no prompt template for theme 'nope'"):
        PromptManager(prompts).theme("nope")
    with pytest.raises(PromptTemplateError, match="does not exist"):
        PromptManager(tmp_path / "absent").theme("testing")


def test_literal_braces_and_escapes() -> None:
    assert render('{"question": "{path}"} {{path}}', {"path": "a.py"}) == '{"question": "a.py"} {path}'


def test_hot_reload_changes_only_the_edited_hash(prompts: Path) -> None:
    manager = PromptManager(prompts)
    before = {name: (manager.theme(name).question_hash, manager.theme(name).answer_hash) for name in DEFAULT_THEMES}
    path = prompts / "debugging.yaml"
    path.write_text(
        path.read_text(encoding="utf-8").replace("propose a concrete fix", "propose a fix"), encoding="utf-8"
    )
    after = {name: (manager.theme(name).question_hash, manager.theme(name).answer_hash) for name in DEFAULT_THEMES}
    changed = {name for name in DEFAULT_THEMES if before[name] != after[name]}
    assert changed == {"debugging"}
    assert before["debugging"][0] == after["debugging"][0]  # question template untouched
    assert before["debugging"][1] != after["debugging"][1]
    assert "propose a fix" in manager.theme("debugging").answer

    # a new theme file appears without a restart
    (prompts / "security.yaml").write_text(
        "question: 'List {n_questions} security questions about {path}. JSON array.'\nanswer: 'Answer: {question}'\n",
        encoding="utf-8",
    )
    assert "security" in manager.themes()


def test_defaults_edit_changes_every_theme(prompts: Path) -> None:
    manager = PromptManager(prompts)
    before = manager.theme("testing").question_hash
    path = prompts / "_defaults.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("patient teacher", "careful teacher"), encoding="utf-8")
    assert manager.theme("testing").question_hash != before


def test_theme_can_override_system(prompts: Path) -> None:
    (prompts / "custom.yaml").write_text(
        "system: 'You review {language} code.'\nquestion: 'Ask {n_questions}.'\nanswer: '{question}'\n",
        encoding="utf-8",
    )
    theme = PromptManager(prompts).theme("custom")
    assert theme.question_messages(CHUNK, 1)[0].content == "You review python code."


def test_config_validate_reports_bad_templates(project: Path) -> None:
    from click.testing import CliRunner

    from cicdllm_assets.cli.main import cli

    # no prompts/ in the project: the shipped templates are used
    assert CliRunner().invoke(cli, ["config", "validate"]).exit_code == 0
    shutil.copytree(PROMPTS_SRC, project / "prompts")
    bad = project / "prompts" / "code_explanation.yaml"
    bad.write_text(bad.read_text(encoding="utf-8").replace("{path}", "{file}", 1), encoding="utf-8")
    result = CliRunner().invoke(cli, ["config", "validate"])
    assert result.exit_code == 2
    assert "code_explanation.yaml" in result.output and "{file}" in result.output


def test_explicit_missing_prompts_dir_is_an_error(project: Path) -> None:
    from cicdllm_assets.config import load_settings
    from cicdllm_assets.generation.prompts import prompt_problems

    (project / "cicdllm.yaml").write_text("generation:\n  prompts_dir: my_prompts\n", encoding="utf-8")
    settings = load_settings()
    problems = prompt_problems(settings.config.generation, settings.prompts_dir)
    assert problems and "my_prompts" in problems[0] and "does not exist" in problems[0]
