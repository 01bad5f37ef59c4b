"""Clone/fetch into the cache on real git repos, ref checkout, errors; licence detection."""

from __future__ import annotations

from pathlib import Path

import pytest

from cicdllm_assets.repos.git_ops import GitError, sync_repo
from cicdllm_assets.repos.license import NOASSERTION, detect_license, identify_license_text
from cicdllm_assets.repos.repos_file import parse_entry
from tests.conftest import git

MIT = """MIT License

Copyright (c) 2024 Someone

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED.
"""

APACHE = """
                                 Apache License
                           Version 2.0, January 2004
                        http://www.apache.org/licenses/

   TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION
"""

GPL3 = """                    GNU GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007

 Copyright (C) 2007 Free Software Foundation, Inc. <https://fsf.org/>
 Everyone is permitted to copy and distribute verbatim copies
 of this license document, but changing it is not allowed.
 ...
  13. Use with the GNU Affero General Public License.
"""

GPL2 = "\t\t    GNU GENERAL PUBLIC LICENSE\n\t\t       Version 2, June 1991\n"

LGPL3 = """                   GNU LESSER GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007
  This version of the GNU Lesser General Public License incorporates
the terms and conditions of version 3 of the GNU General Public
License, supplemented by the additional permissions listed below.
"""

AGPL3 = """                    GNU AFFERO GENERAL PUBLIC LICENSE
                       Version 3, 19 November 2007
"""

BSD3 = """Copyright (c) 2020, X
Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:
1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.
2. Redistributions in binary form must reproduce the above copyright notice.
3. Neither the name of the copyright holder nor the names of its
   contributors may be used to endorse or promote products derived from
   this software without specific prior written permission.
"""

BSD2 = """Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:
1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.
2. Redistributions in binary form must reproduce the above copyright notice.
"""

ISC = """ISC License
Permission to use, copy, modify, and/or distribute this software for any
purpose with or without fee is hereby granted, provided that the above
copyright notice and this permission notice appear in all copies.
"""

OTHERS = {
    "MPL-2.0": "Mozilla Public License Version 2.0\n==================================\n",
    "Unlicense": "This is free and unencumbered software released into the public domain.\n",
    "CC0-1.0": "Creative Commons Legal Code\n\nCC0 1.0 Universal\n",
    "BSL-1.0": "Boost Software License - Version 1.0 - August 17th, 2003\n",
    "Zlib": (
        "This software is provided 'as-is', without any express or implied\nwarranty.\n"
        "2. Altered source versions must be plainly marked as such, and must not be\n"
    ),
}


# -- licences --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spdx"),
    [
        (MIT, "MIT"),
        (APACHE, "Apache-2.0"),
        (GPL3, "GPL-3.0-only"),
        (GPL2, "GPL-2.0-only"),
        (LGPL3, "LGPL-3.0-only"),
        (AGPL3, "AGPL-3.0-only"),
        (BSD3, "BSD-3-Clause"),
        (BSD2, "BSD-2-Clause"),
        (ISC, "ISC"),
        *[(text, spdx) for spdx, text in OTHERS.items()],
        ("All rights reserved.\n", None),
        ("", None),
    ],
)
def test_identify_license_text(text: str, spdx: str | None) -> None:
    assert identify_license_text(text) == spdx


def test_identify_rewrapped_text() -> None:
    rewrapped = " ".join(MIT.split()).replace("Permission is hereby", "\n\nPermission   is\thereby")
    assert identify_license_text(rewrapped) == "MIT"


SYSTEM_LICENSES = Path("/usr/share/common-licenses")


@pytest.mark.skipif(not SYSTEM_LICENSES.is_dir(), reason="no /usr/share/common-licenses on this machine")
@pytest.mark.parametrize(
    ("name", "spdx"),
    [
        ("Apache-2.0", "Apache-2.0"),
        ("GPL-2", "GPL-2.0-only"),
        ("GPL-3", "GPL-3.0-only"),
        ("LGPL-2.1", "LGPL-2.1-only"),
        ("LGPL-3", "LGPL-3.0-only"),
        ("MPL-2.0", "MPL-2.0"),
        ("CC0-1.0", "CC0-1.0"),
    ],
)
def test_identify_full_system_license_texts(name: str, spdx: str) -> None:
    path = SYSTEM_LICENSES / name
    if not path.is_file():
        pytest.skip(f"{path} missing")
    assert identify_license_text(path.read_text(encoding="utf-8", errors="replace")) == spdx


def test_detect_license_files(tmp_path: Path) -> None:
    assert detect_license(tmp_path) == NOASSERTION
    (tmp_path / "LICENSE").write_text(MIT, encoding="utf-8")
    assert detect_license(tmp_path) == "MIT"
    (tmp_path / "LICENSE").unlink()
    (tmp_path / "COPYING").write_text(GPL3, encoding="utf-8")
    assert detect_license(tmp_path) == "GPL-3.0-only"
    # LGPL projects ship COPYING (GPL) + COPYING.LESSER: the licence is the LGPL
    (tmp_path / "COPYING.LESSER").write_text(LGPL3, encoding="utf-8")
    assert detect_license(tmp_path) == "LGPL-3.0-only"
    for path in tmp_path.iterdir():
        path.unlink()
    (tmp_path / "LICENSE-MIT").write_text(MIT, encoding="utf-8")
    (tmp_path / "LICENCE-APACHE.txt").write_text(APACHE, encoding="utf-8")
    assert detect_license(tmp_path) == "Apache-2.0 OR MIT"
    (tmp_path / "LICENSE-MIT").unlink()
    (tmp_path / "LICENCE-APACHE.txt").unlink()
    (tmp_path / "LICENSE.md").write_text("Proprietary. All rights reserved.", encoding="utf-8")
    assert detect_license(tmp_path) == NOASSERTION


def test_this_project_is_mit() -> None:
    assert detect_license(Path(__file__).resolve().parents[1]) == "MIT"


# -- clone / fetch -------------------------------------------------------------------


@pytest.fixture
def upstream(make_git_repo):
    """A repo with two commits on main, a tag v1 on the first, a branch 'dev'."""
    repo = make_git_repo("upstream", {"LICENSE": MIT, "a.py": "print(1)\n"})
    first = repo.git("rev-parse", "HEAD")
    repo.git("tag", "v1")
    repo.git("branch", "dev")
    repo.write("a.py", "print(2)\n")
    second = repo.commit("second")
    repo.git("checkout", "-q", "dev")
    repo.write("dev.py", "dev = True\n")
    dev = repo.commit("dev work")
    repo.git("checkout", "-q", "main")
    return repo, {"first": first, "second": second, "dev": dev}


def entry_for(spec: str, base: Path):
    return parse_entry(spec, base)


def test_clone_default_branch_then_fetch_new_commit(upstream, tmp_path: Path) -> None:
    repo, shas = upstream
    cache = tmp_path / "cache"
    entry = entry_for("upstream", repo.path.parent)
    result = sync_repo(entry, cache, timeout=60)
    assert result.cloned is True
    assert result.path == cache / "local-upstream"
    assert result.head_commit == shas["second"]
    assert result.default_branch == "main"
    assert result.size_bytes > 0
    assert (result.path / "a.py").read_text() == "print(2)\n"
    assert git(result.path, "rev-parse", "HEAD") == shas["second"]

    again = sync_repo(entry, cache, timeout=60)
    assert again.cloned is False and again.head_commit == shas["second"]

    repo.write("b.py", "x = 1\n")
    third = repo.commit("third")
    moved = sync_repo(entry, cache, timeout=60)
    assert moved.cloned is False
    assert moved.head_commit == third != shas["second"]
    assert (moved.path / "b.py").exists()


def test_uncommitted_changes_of_the_source_are_ignored(upstream, tmp_path: Path) -> None:
    repo, shas = upstream
    repo.write("a.py", "dirty\n")
    repo.write("untracked.py", "u\n")
    result = sync_repo(entry_for("upstream", repo.path.parent), tmp_path / "cache", timeout=60)
    assert result.head_commit == shas["second"]
    assert (result.path / "a.py").read_text() == "print(2)\n"
    assert not (result.path / "untracked.py").exists()


@pytest.mark.parametrize(
    ("ref", "expected", "how"),
    [("v1", "first", "tag v1"), ("dev", "dev", "branch dev"), ("main", "second", "branch main")],
)
def test_checkout_pinned_tag_and_branch(upstream, tmp_path: Path, ref: str, expected: str, how: str) -> None:
    repo, shas = upstream
    result = sync_repo(entry_for(f"upstream@{ref}", repo.path.parent), tmp_path / "cache", timeout=60)
    assert result.head_commit == shas[expected]
    assert result.resolved == how
    assert result.ref == ref
    assert result.path.name == f"local-upstream@{ref}"


def test_checkout_pinned_commit_full_and_short(upstream, tmp_path: Path) -> None:
    repo, shas = upstream
    for ref in (shas["first"], shas["first"][:10]):
        result = sync_repo(entry_for(f"upstream@{ref}", repo.path.parent), tmp_path / "cache", timeout=60)
        assert result.head_commit == shas["first"]
        assert (result.path / "a.py").read_text() == "print(1)\n"


def test_bare_repository_source(upstream, tmp_path: Path) -> None:
    repo, shas = upstream
    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo.path), str(bare))
    result = sync_repo(entry_for("bare.git@v1", tmp_path), tmp_path / "cache", timeout=60)
    assert result.head_commit == shas["first"]
    assert result.path.name == "local-bare.git@v1"
    default = sync_repo(entry_for("bare.git", tmp_path), tmp_path / "cache", timeout=60)
    assert default.head_commit == shas["second"] and default.default_branch == "main"


def test_moved_tag_is_picked_up(upstream, tmp_path: Path) -> None:
    repo, shas = upstream
    entry = entry_for("upstream@v1", repo.path.parent)
    assert sync_repo(entry, tmp_path / "cache", timeout=60).head_commit == shas["first"]
    repo.git("tag", "-f", "v1", shas["second"])
    assert sync_repo(entry, tmp_path / "cache", timeout=60).head_commit == shas["second"]


def test_unknown_ref_is_a_readable_error(upstream, tmp_path: Path) -> None:
    repo, _ = upstream
    with pytest.raises(GitError, match=r"ref 'nope' not found in .*upstream") as raised:
        sync_repo(entry_for("upstream@nope", repo.path.parent), tmp_path / "cache", timeout=60)
    assert raised.value.permanent  # retrying cannot make the ref appear


def test_not_a_repository_is_a_readable_error(tmp_path: Path) -> None:
    (tmp_path / "plain-dir").mkdir()
    with pytest.raises(GitError, match=r"clone of .*plain-dir failed: .*does not exist") as raised:
        sync_repo(entry_for("plain-dir", tmp_path), tmp_path / "cache", timeout=60)
    assert raised.value.permanent
    assert not (tmp_path / "cache" / "local-plain-dir").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_unreachable_remote_fails_fast_without_prompting(tmp_path: Path) -> None:
    entry = entry_for("https://127.0.0.1:9/owner/name", tmp_path)
    with pytest.raises(GitError, match=r"clone of https://127\.0\.0\.1:9/owner/name failed") as raised:
        sync_repo(entry, tmp_path / "cache", timeout=30)
    assert not raised.value.permanent  # a network failure may heal: the step retry policy applies


def test_ext_transport_is_blocked_even_if_it_reached_git(tmp_path: Path) -> None:
    """Defence in depth: a hand-built entry with an ext:: URL is refused by git's protocol policy."""
    from dataclasses import replace

    marker = tmp_path / "pwned"
    entry = replace(entry_for("https://example.invalid/a/b", tmp_path), url=f"ext::sh -c touch% {marker}")
    with pytest.raises(GitError):
        sync_repo(entry, tmp_path / "cache", timeout=30)
    assert not marker.exists()


def test_replaces_a_cache_dir_of_another_origin(upstream, make_git_repo, tmp_path: Path) -> None:
    repo, shas = upstream
    other = make_git_repo("other", {"o.py": "o\n"})
    cache = tmp_path / "cache"
    entry = entry_for("upstream", repo.path.parent)
    (cache / entry.key).mkdir(parents=True)
    git(cache / entry.key, "clone", "-q", str(other.path), ".")
    result = sync_repo(entry, cache, timeout=60)
    assert result.cloned is True and result.head_commit == shas["second"]


def test_hanging_server_is_killed_after_the_timeout(tmp_path: Path) -> None:
    """A server that accepts connections and never answers: git is killed, the error says why."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    port = server.getsockname()[1]
    try:
        entry = entry_for(f"https://127.0.0.1:{port}/owner/name", tmp_path)
        with pytest.raises(GitError, match=r"timed out after 2s") as raised:
            sync_repo(entry, tmp_path / "cache", timeout=2)
        assert not raised.value.permanent
        assert not (tmp_path / "cache" / entry.key).exists()
    finally:
        server.close()
        for conn in held:
            conn.close()


def test_quoted_local_path_with_spaces_clones(make_git_repo, tmp_path: Path) -> None:
    repo = make_git_repo("my repo", {"a.py": "x = 1\n"})
    entry = parse_entry(f'"{repo.path}"@main', tmp_path)
    result = sync_repo(entry, tmp_path / "cache", timeout=60)
    assert result.head_commit == repo.git("rev-parse", "HEAD")
    assert (result.path / "a.py").read_text() == "x = 1\n"
