"""source_files and code_chunks materialized with Dagster on a real git repo and a real tokenizer."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from cicdllm_assets.config import load_settings
from cicdllm_assets.storage.state import StateStore
from cicdllm_assets.storage.tables import TableStore
from tests.discovery_helpers import materialize_ingest, train_tokenizer, write_config, write_repositories_row
from tests.test_discovery_repo import build_repo

BUDGET = 96


@pytest.fixture
def ingest_project(project, make_git_repo, tmp_path):
    tok = train_tokenizer(tmp_path / "tok" / "tokenizer.json")
    write_config(project, tok, "  max_file_size_kb: 64\n", budget=BUDGET)
    repo, main_head, _ = build_repo(make_git_repo)
    settings = load_settings()
    write_repositories_row(settings, "sample", repo.path, main_head)
    return settings, repo, main_head, tok


def _meta(result, asset: str) -> dict:
    mats = [m for m in result.asset_materializations_for_node(asset)]
    assert len(mats) == 1
    return {k: v.value for k, v in mats[0].metadata.items()}


def test_materialize_source_files_and_code_chunks(ingest_project) -> None:
    settings, _repo, head, tok = ingest_project
    result = materialize_ingest("sample")
    assert result.success
    store = TableStore(settings.tables_dir)
    files = store.read("source_files", "sample").to_pylist()
    chunks = store.read("code_chunks", "sample").to_pylist()
    assert {f["path"] for f in files if f["status"] == "kept"} == {
        "README.md",
        "src/app.py",
        "src/util.js",
        "docs/utf16.txt",
        "docs/latin1.py",
        "link_inside.py",
    }
    assert all(f["commit"] == head and f["repo"] == "sample" for f in files)
    skipped = {f["path"]: f["skip_reason"] for f in files if f["status"] == "skipped"}
    assert skipped["link_outside.py"].startswith("symlink outside repository")
    assert skipped["big/huge.txt"] == "too large: 118 KB > 64 KB"

    # chunks: provenance, budget with the real tokenizer, no duplicate keys
    tokenizer = Tokenizer.from_file(str(tok))
    assert chunks and len({c["chunk_key"] for c in chunks}) == len(chunks)
    for chunk in chunks:
        assert chunk["license"] == "MIT" and chunk["commit"] == head
        assert len(tokenizer.encode(chunk["text"], add_special_tokens=False).ids) <= BUDGET
        assert chunk["start_line"] <= chunk["end_line"]
    app_symbols = {c["symbol"] for c in chunks if c["path"] == "src/app.py"}
    assert any("Greeter" in s for s in app_symbols)
    app_chunk = next(c for c in chunks if c["path"] == "src/app.py")
    assert "import os" in app_chunk["imports"]
    assert "dirty working tree" not in "".join(c["text"] for c in chunks)
    latin = "".join(c["text"] for c in chunks if c["path"] == "docs/latin1.py")
    assert "Café résumé" in latin
    # the symlink inside the repo has the same blob as its target: its chunks are not duplicated
    assert not [c for c in chunks if c["path"] == "link_inside.py"]

    meta = _meta(result, "source_files")
    assert meta["files_kept"] == 6 and meta["skipped_by_reason"]["lock_file"] == 2
    assert meta["cache_misses"] > 0
    chunk_meta = _meta(result, "code_chunks")
    assert chunk_meta["chunks"] == len(chunks) and chunk_meta["tokenizer_calls"] == 0  # plans came from cache
    assert chunk_meta["max_chunk_tokens"] <= BUDGET

    # live state: progress per stage, readable through DuckDB views at the same time
    state = StateStore(settings.state_db)
    progress = {p.stage: p for p in state.progress("sample")}
    assert progress["source_files"].status == "done" and progress["source_files"].done == len(files)
    assert progress["code_chunks"].done == 6
    con = store.connect()
    assert con.execute("SELECT count(*) FROM code_chunks").fetchone()[0] == len(chunks)
    assert con.execute("SELECT count(*) FROM source_files WHERE status = 'skipped'").fetchone()[0] == len(skipped)


def test_rematerialize_hits_cache_and_keeps_keys(ingest_project) -> None:
    settings, repo, _head, _ = ingest_project
    assert materialize_ingest("sample").success
    store = TableStore(settings.tables_dir)
    first = store.read("code_chunks", "sample").to_pylist()
    # forget the in-process LRU so the hits below come from the SQLite cache
    from cicdllm_assets.chunking import runtime

    for cache in runtime._caches.values():
        cache.clear_memory()
    result = materialize_ingest("sample")
    assert result.success
    meta = _meta(result, "source_files")
    assert meta["cache_misses"] == 0 and meta["tokenizer_calls"] == 0 and meta["cache_hits"] == 6
    chunk_meta = _meta(result, "code_chunks")
    # every chunk text is looked up; docs/latin1.py is one pair of lines three times: three
    # identical chunks, one content key, one row
    assert chunk_meta["redaction_cache_misses"] == 0 and chunk_meta["redaction_cache_hits"] == chunk_meta["chunks"] + 2
    second = store.read("code_chunks", "sample").to_pylist()
    assert [c["chunk_key"] for c in first] == [c["chunk_key"] for c in second]
    assert first == second

    # change one file in a new commit: only that blob is tokenized again
    repo.git("checkout", "--", "src/app.py")  # drop the dirty working-tree edit of the fixture
    repo.write("src/util.js", "export function sub(a, b) {\n  return a - b;\n}\n")
    new_head = repo.commit("change util")
    write_repositories_row(settings, "sample", repo.path, new_head)
    result = materialize_ingest("sample")
    meta = _meta(result, "source_files")
    assert meta["cache_misses"] == 1 and meta["cache_hits"] == 5 and meta["tokenizer_calls"] == 1
    third = {c["chunk_key"] for c in store.read("code_chunks", "sample").to_pylist()}
    unchanged = {c["chunk_key"] for c in first if c["path"] != "src/util.js"}
    assert unchanged <= third


def test_missing_tokenizer_fails_with_clear_message(project, make_git_repo, tmp_path) -> None:
    """A processing.tokenizer that does not exist is named; (with the default 'model', an
    unprepared embedded model still has its tokenizer: see test_model_choice)."""
    from cicdllm_assets.assets.source_files import source_files

    repo = make_git_repo("plain", {"a.py": "x = 1\n"})
    write_config(project, tmp_path / "nowhere" / "tokenizer.json")
    settings = load_settings()
    write_repositories_row(settings, "plain", repo.path, repo.git("rev-parse", "HEAD"))
    with pytest.raises(Exception, match=r"processing.tokenizer: no tokenizer.json at .*nowhere"):
        materialize_ingest("plain", [source_files])
    failures = (
        StateStore(settings.state_db)
        .connection()
        .execute("SELECT category FROM failures WHERE repo = 'plain' AND stage = 'source_files'")
        .fetchall()
    )
    assert [row[0] for row in failures] == ["tokenizer"]
