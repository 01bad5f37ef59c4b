"""repos.txt parsing: accepted forms, every rejection, partition keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DynamicPartitionsDefinition

from cicdllm_assets.repos.repos_file import (
    ReposFileError,
    parse_repos_text,
    read_repos_file,
    redact_credentials,
)


def parse(text: str, base: Path) -> list:
    return parse_repos_text(text, base, "repos.txt")


def errors_of(text: str, base: Path) -> ReposFileError:
    with pytest.raises(ReposFileError) as info:
        parse(text, base)
    return info.value


def test_accepted_forms_and_keys(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "other").mkdir()
    text = """
# a comment

https://github.com/pallets/click
https://github.com/pallets/click@8.1.7   # pinned, inline comment
https://GitHub.com/psf/requests.git@main
git@github.com:psf/black.git@24.1.0
git@gitlab.com:group/sub/project.git
ssh://git@example.org:2222/team/tool
.
../other@feature/x
"""
    entries = parse(text, tmp_path / "proj")
    keys = [e.key for e in entries]
    assert keys == [
        "github.com-pallets-click",
        "github.com-pallets-click@8.1.7",
        "github.com-psf-requests@main",
        "github.com-psf-black@24.1.0",
        "gitlab.com-group-sub-project",
        "example.org-2222-team-tool",
        "local-proj",
        "local-other@feature-x",
    ]
    by_key = {e.key: e for e in entries}
    assert by_key["github.com-pallets-click@8.1.7"].ref == "8.1.7"
    assert by_key["github.com-pallets-click@8.1.7"].line_no == 5
    assert by_key["github.com-pallets-click@8.1.7"].url == "https://github.com/pallets/click"
    # scp-like: the user's @ is not a ref; the last @ is.
    black = by_key["github.com-psf-black@24.1.0"]
    assert (black.url, black.ref, black.kind) == ("git@github.com:psf/black.git", "24.1.0", "remote")
    assert by_key["gitlab.com-group-sub-project"].ref is None
    assert by_key["example.org-2222-team-tool"].url == "ssh://git@example.org:2222/team/tool"
    local = by_key["local-proj"]
    assert local.kind == "local" and local.local_path == (tmp_path / "proj").resolve()
    assert by_key["local-other@feature-x"].ref == "feature/x"


def test_keys_are_valid_dagster_partition_keys(tmp_path: Path, make_git_repo) -> None:
    text = "https://github.com/a/b@v1.0\ngit@host.example:x/y.git@0123abc\n.\n"
    entries = parse(text, tmp_path)
    keys = [e.key for e in entries]
    definition = DynamicPartitionsDefinition(name="probe")
    # build_add_request validates keys the same way the instance does
    definition.build_add_request(keys)
    for key in keys:
        assert "..." not in key and "/" not in key and " " not in key


def test_keys_are_deterministic_and_appending_keeps_existing_keys(tmp_path: Path) -> None:
    first = parse("https://github.com/a-b/c\n", tmp_path)
    again = parse("https://github.com/a-b/c\n", tmp_path)
    assert [e.key for e in first] == [e.key for e in again] == ["github.com-a-b-c"]
    # github.com/a/b-c collides with github.com/a-b/c: the later line gets a hash suffix
    both = parse("https://github.com/a-b/c\nhttps://github.com/a/b-c\n", tmp_path)
    assert both[0].key == "github.com-a-b-c"
    assert both[1].key.startswith("github.com-a-b-c~") and len(both[1].key) == len("github.com-a-b-c~") + 8
    assert parse("https://github.com/a-b/c\nhttps://github.com/a/b-c\n", tmp_path)[1].key == both[1].key


def test_same_repo_different_refs_are_distinct(tmp_path: Path) -> None:
    entries = parse("https://github.com/a/b\nhttps://github.com/a/b@dev\n", tmp_path)
    assert [e.key for e in entries] == ["github.com-a-b", "github.com-a-b@dev"]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("ext::sh -c touch% /tmp/pwned", "transport helpers"),
        ("ext::sh", "transport helpers"),
        ("fd::17", "transport helpers"),
        ("foo::bar/baz", "transport helpers"),
        ("--upload-pack=touch /tmp/x", "must not start with '-'"),
        ("https://github.com/a/b c", "whitespace"),
        ("--upload-pack=evil", "must not start with '-'"),
        ("-oProxyCommand=evil", "must not start with '-'"),
        ("http://github.com/a/b", "unsupported scheme 'http'"),
        ("ftp://example.org/a/b", "unsupported scheme 'ftp'"),
        ("git://example.org/a/b", "unsupported scheme 'git'"),
        ("file:///tmp/repo", "file:// URLs are not supported"),
        ("https://github.com/a/b@", "empty ref"),
        ("https://github.com/a/b@-rf", "invalid ref"),
        ("https://github.com/a/b@a..b", "invalid ref"),
        ("https://github.com/a/b?x=1", "query strings"),
        ("https://github.com/", "missing repository path"),
        ("https://github.com/a/../b", "invalid repository path segment"),
        ("does/not/exist", "local path does not exist"),
        ("github.com/pallets/click", "did you mean https://github.com/pallets/click?"),
    ],
)
def test_rejections(tmp_path: Path, line: str, fragment: str) -> None:
    error = errors_of(f"# header\n{line}\n", tmp_path)
    assert len(error.errors) == 1
    assert error.errors[0].line_no == 2
    assert fragment in error.errors[0].message
    assert "repos.txt:2:" in str(error)


@pytest.mark.parametrize(
    "line",
    [
        "https://user:s3cr3tT0ken@github.com/a/b",
        "https://s3cr3tT0ken@github.com/a/b",
        "ssh://git:s3cr3tT0ken@example.org/a/b",
        "git:s3cr3tT0ken@github.com:a/b.git",
        "https://x-access-token:s3cr3tT0ken@github.com/a/b@main",
    ],
)
def test_credentials_rejected_and_never_echoed(tmp_path: Path, line: str) -> None:
    error = errors_of(line + "\n", tmp_path)
    assert "credentials" in error.errors[0].message
    assert "s3cr3tT0ken" not in str(error)
    assert "s3cr3tT0ken" not in error.errors[0].text
    assert "s3cr3tT0ken" not in repr(error.errors)


def test_redact_credentials() -> None:
    assert redact_credentials("fatal: https://u:tok@host/x failed") == "fatal: https://***@host/x failed"
    assert redact_credentials("u:tok@host:x/y") == "***@host:x/y"
    assert redact_credentials("https://github.com/a/b") == "https://github.com/a/b"


def test_duplicates_rejected(tmp_path: Path) -> None:
    text = (
        "https://github.com/a/b\n"
        "https://github.com/a/b.git\n"  # same repo, .git suffix
        "git@github.com:a/b.git\n"  # same repo over ssh
        "https://github.com/a/b@v1\n"  # different ref: fine
        "https://github.com/a/b/@v1\n"  # duplicate of the previous one
    )
    error = errors_of(text, tmp_path)
    assert [(e.line_no, e.message) for e in error.errors] == [
        (2, "duplicate of line 1 (same repository and ref)"),
        (3, "duplicate of line 1 (same repository and ref)"),
        (5, "duplicate of line 4 (same repository and ref)"),
    ]


def test_local_duplicates_by_resolved_path(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    error = errors_of("sub\n./sub\n", tmp_path)
    assert error.errors[0].line_no == 2 and "duplicate" in error.errors[0].message


def test_all_bad_lines_reported_together(tmp_path: Path) -> None:
    text = "https://github.com/ok/one\next::sh\nhttp://x.org/a/b\n\n# fine\n-x\nmissing-dir\n"
    error = errors_of(text, tmp_path)
    assert [e.line_no for e in error.errors] == [2, 3, 6, 7]
    message = str(error)
    assert "4 invalid lines" in message
    for line_no in (2, 3, 6, 7):
        assert f"repos.txt:{line_no}:" in message


def test_read_repos_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "my-repos.txt"
    path.write_text("ext::x\n", encoding="utf-8")
    with pytest.raises(ReposFileError) as info:
        read_repos_file(path)
    assert f"{path}:1:" in str(info.value)
    with pytest.raises(ReposFileError, match="does not exist"):
        read_repos_file(tmp_path / "missing.txt")


def test_dot_is_the_directory_of_the_repos_file(tmp_path: Path) -> None:
    project = tmp_path / "my project"
    project.mkdir()
    path = project / "repos.txt"
    path.write_text(".\n", encoding="utf-8")
    [entry] = read_repos_file(path)
    assert entry.local_path == project.resolve()
    assert entry.key == "local-my-project"


def test_local_path_containing_at_sign(tmp_path: Path) -> None:
    (tmp_path / "name@2").mkdir()
    (tmp_path / "plain").mkdir()
    entries = parse("name@2\nplain@v2\n", tmp_path)
    assert entries[0].ref is None and entries[0].local_path == (tmp_path / "name@2").resolve()
    assert entries[1].ref == "v2" and entries[1].key == "local-plain@v2"


def test_shipped_repos_file_is_valid() -> None:
    root = Path(__file__).resolve().parents[1]
    entries = read_repos_file(root / "repos.txt")
    assert any(entry.local_path == root for entry in entries)
    demo = next(entry for entry in entries if entry.local_path == root)
    assert demo.include_globs == ("cicdllm_assets/**/*.py",)  # the demo bound is this repository's own


def test_per_repo_options(tmp_path: Path) -> None:
    from cicdllm_assets.config.models import ProcessingConfig

    entries = parse(
        "https://github.com/pallets/click@8.1.7 include=src/**\n"
        "https://github.com/psf/requests exclude=tests/** exclude=docs/**,*.md include=src/**,lib/*.py\n"
        "https://github.com/a/b\n",
        tmp_path,
    )
    click, requests, plain = entries
    assert (click.ref, click.include_globs, click.exclude_globs, click.spec) == (
        "8.1.7",
        ("src/**",),
        (),
        "https://github.com/pallets/click@8.1.7",
    )
    assert requests.include_globs == ("src/**", "lib/*.py")
    assert requests.exclude_globs == ("tests/**", "docs/**", "*.md")
    base = ProcessingConfig(include_globs=["everything/**"])
    merged = requests.processing(base)
    assert merged.include_globs == ["src/**", "lib/*.py"]  # the repo's include replaces the global one
    assert merged.exclude_globs == [*base.exclude_globs, "tests/**", "docs/**", "*.md"]  # excludes add up
    assert plain.processing(base) is base


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        ("includes=src/**", "unknown option 'includes'"),
        ("include=", "option include= needs at least one glob"),
        ("include=,", "option include= needs at least one glob"),
        ("exclude=/etc/**", "must be relative to the repository root"),
        ("include=../other/**", "must be relative to the repository root"),
    ],
)
def test_bad_options_are_line_numbered_errors(tmp_path: Path, option: str, fragment: str) -> None:
    error = errors_of(f"# header\nhttps://github.com/a/b {option}\n", tmp_path)
    assert [e.line_no for e in error.errors] == [2]
    assert fragment in error.errors[0].message
    assert f"repos.txt:2: 'https://github.com/a/b {option}'" in str(error)


def test_overlong_line_is_a_line_error_and_every_other_error_is_reported(tmp_path: Path) -> None:
    (tmp_path / "ok").mkdir()
    long_line = "x" * 2000
    text = f"ok\nftp://example.com/a/b\n{long_line}\n{long_line}@main\n./missing\n"
    error = errors_of(text, tmp_path)
    assert [e.line_no for e in error.errors] == [2, 3, 4, 5]
    assert "File name too long" in error.errors[1].message
    assert "2000 characters" in error.errors[1].text and len(error.errors[1].text) < 200
    assert "local path does not exist" in error.errors[3].message


def test_local_paths_with_spaces_quoted_or_escaped(tmp_path: Path) -> None:
    (tmp_path / "my repo").mkdir()
    (tmp_path / "other one").mkdir()
    (tmp_path / "third  dir").mkdir()
    text = "\"my repo\"@main\n'other one'\nthird\\ \\ dir  # escaped\n"
    entries = parse(text, tmp_path)
    assert [(e.kind, e.local_path, e.ref, e.key) for e in entries] == [
        ("local", tmp_path / "my repo", "main", "local-my-repo@main"),
        ("local", tmp_path / "other one", None, "local-other-one"),
        ("local", tmp_path / "third  dir", None, "local-third-dir"),
    ]
    assert entries[0].spec == '"my repo"@main'
    unquoted = errors_of('my repo\n"my repo\n"my repo"x\n', tmp_path)
    assert [e.message for e in unquoted.errors] == [
        "an entry cannot contain whitespace (one repository per line; quote a local path with spaces:"
        ' "my repo" or my\\ repo)',
        'unterminated quote "',
        "only '@ref' may follow a quoted path",
    ]
