"""`cicdllm repos list/add/sync` through click's CliRunner on an isolated project."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from dagster import DagsterInstance

from cicdllm_assets.cli.main import cli
from cicdllm_assets.partitions import REPOS_PARTITIONS_NAME


def invoke(*args: str):
    return CliRunner().invoke(cli, ["repos", *args], catch_exceptions=False)


def registered(project: Path) -> list[str]:
    with DagsterInstance.from_config(str(project / "dagster_home")) as instance:
        return sorted(instance.get_dynamic_partitions(REPOS_PARTITIONS_NAME))


def test_add_list_sync_roundtrip(project: Path, make_git_repo) -> None:
    repo = make_git_repo("alpha")
    repos_txt = project / "repos.txt"
    repos_txt.write_text("# my repos\n\n# keep this comment", encoding="utf-8")  # no trailing newline

    result = invoke("add", str(repo.path))
    assert result.exit_code == 0, result.output
    assert "added local-alpha" in result.output
    result = invoke("add", "--no-preview", "https://github.com/pallets/click@8.1.7")
    assert result.exit_code == 0, result.output
    assert repos_txt.read_text(encoding="utf-8") == (
        f"# my repos\n\n# keep this comment\n{repo.path}\nhttps://github.com/pallets/click@8.1.7\n"
    )

    listed = invoke("list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [(r["key"], r["ref"], r["registered"]) for r in rows] == [
        ("local-alpha", None, False),
        ("github.com-pallets-click@8.1.7", "8.1.7", False),
    ]
    assert rows[1]["url"] == "https://github.com/pallets/click"

    synced = invoke("sync")
    assert synced.exit_code == 0, synced.output
    assert "added    local-alpha" in synced.output
    assert "added    github.com-pallets-click@8.1.7" in synced.output
    assert "2 added, 0 removed, 2 registered" in synced.output
    assert registered(project) == ["github.com-pallets-click@8.1.7", "local-alpha"]

    table = invoke("list")
    assert table.exit_code == 0
    assert "local-alpha" in table.output and "[registered]" in table.output

    repos_txt.write_text(f"{repo.path}\n", encoding="utf-8")
    synced = invoke("sync", "--json")
    assert json.loads(synced.output) == {"added": [], "removed": ["github.com-pallets-click@8.1.7"]}
    assert registered(project) == ["local-alpha"]


def test_add_refuses_duplicates_and_bad_input(project: Path) -> None:
    repos_txt = project / "repos.txt"
    assert invoke("add", "https://github.com/a/b").exit_code == 0
    before = repos_txt.read_text(encoding="utf-8")

    duplicate = invoke("add", "git@github.com:a/b.git")
    assert duplicate.exit_code == 2
    assert "repos.txt:2:" in duplicate.output and "duplicate of line 1" in duplicate.output

    for bad, fragment in [
        ("ext::sh", "transport helpers"),
        ("http://github.com/x/y", "unsupported scheme"),
        ("./does-not-exist", "local path does not exist"),
        ("# only a comment", "not a repository entry"),
    ]:
        result = invoke("add", bad)
        assert result.exit_code == 2, (bad, result.output)
        assert fragment in result.output

    leaked = invoke("add", "https://me:ghp_TOPSECRET@github.com/x/y")
    assert leaked.exit_code == 2
    assert "credentials" in leaked.output and "ghp_TOPSECRET" not in leaked.output
    assert repos_txt.read_text(encoding="utf-8") == before


def test_add_option_like_value_after_double_dash(project: Path) -> None:
    result = invoke("add", "--", "--upload-pack=evil")
    assert result.exit_code == 2
    assert "must not start with '-'" in result.output


def test_invalid_repos_file_exit_code_2(project: Path) -> None:
    (project / "repos.txt").write_text("https://github.com/ok/repo\nftp://x/y/z\n-oops\n", encoding="utf-8")
    for args in (("list",), ("sync",)):
        result = invoke(*args)
        assert result.exit_code == 2
        assert "repos.txt:2:" in result.output and "repos.txt:3:" in result.output
    assert registered(project) == []


def test_list_empty(project: Path) -> None:
    result = invoke("list")
    assert result.exit_code == 0
    assert "no repositories" in result.output


def test_remove_by_key_or_spec_keeps_comments(project: Path) -> None:
    repos_txt = project / "repos.txt"
    repos_txt.write_text(
        "# header\nhttps://github.com/a/b  # inline\n\nhttps://github.com/c/d@v1\n# footer\n", encoding="utf-8"
    )
    result = invoke("remove", "github.com-a-b")
    assert result.exit_code == 0, result.output
    assert "removed github.com-a-b (line 2)" in result.output
    assert repos_txt.read_text(encoding="utf-8") == "# header\n\nhttps://github.com/c/d@v1\n# footer\n"
    assert invoke("remove", "https://github.com/c/d@v1").exit_code == 0
    assert repos_txt.read_text(encoding="utf-8") == "# header\n\n# footer\n"
    missing = invoke("remove", "github.com-a-b")
    assert missing.exit_code == 2 and "no entry" in missing.output


def test_add_local_path_with_spaces_writes_it_quoted(project: Path, make_git_repo) -> None:
    repo = make_git_repo("my repo")
    result = invoke("add", str(repo.path))
    assert result.exit_code == 0, result.output
    assert (project / "repos.txt").read_text(encoding="utf-8") == f'"{repo.path}"\n'
    rows = json.loads(invoke("list", "--json").output)
    assert [(row["key"], row["url"]) for row in rows] == [("local-my-repo", str(repo.path))]


def test_add_counts_the_files_its_options_keep(project: Path, make_git_repo) -> None:
    repo = make_git_repo("mixed", {"src/a.py": "A = 1\n", "src/b.py": "B = 2\n", "docs/x.md": "# x\n"})
    repos_txt = project / "repos.txt"

    result = invoke("add", str(repo.path), "include=lib/**")
    assert result.exit_code == 0, result.output
    assert "0 of 3 files at" in result.output and "would be kept (3 not_included skipped)" in result.output
    assert "warning: no file would be kept: set include=GLOB on its repos.txt line" in result.output

    repos_txt.write_text("", encoding="utf-8")
    result = invoke("add", str(repo.path), "include=src/**", "exclude=src/b.py")
    assert result.exit_code == 0, result.output
    assert "1 of 3 files at" in result.output and "warning" not in result.output
    assert repos_txt.read_text(encoding="utf-8") == f"{repo.path} include=src/** exclude=src/b.py\n"
    rows = json.loads(invoke("list", "--json").output)
    assert (rows[0]["include"], rows[0]["exclude"]) == (["src/**"], ["src/b.py"])

    result = invoke("add", str(repo.path), "inclde=src/**")
    assert result.exit_code == 2
    assert f"repos.txt:2: '{repo.path} inclde=src/**': unknown option 'inclde'" in result.output
    assert repos_txt.read_text(encoding="utf-8") == f"{repo.path} include=src/** exclude=src/b.py\n"  # unchanged
