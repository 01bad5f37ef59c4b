"""End-to-end: qa_pairs and training_dataset materialized with Dagster over stored tables."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckKey, AssetKey, AssetRecordsFilter

from cicdllm_assets.config import load_settings
from cicdllm_assets.export.validate import ALL_CHECKS, load_export
from cicdllm_assets.storage.tables import TableStore
from tests.export_fixtures import answer_row, assert_table_metadata, chunk_row, run_dataset_assets, store_repo

CODE = {
    "src/config.py": "import yaml\n\ndef parse_config(path):\n    data = yaml.safe_load(open(path))\n"
    "    return Settings(**data)\n",
    "src/repos.py": "def load_repos(file):\n    return [line.strip() for line in open(file) if line.strip()]\n",
    "src/util.py": "def slugify(name):\n    return name.lower().replace(' ', '-')\n",
    "src/cli.py": "def main(argv):\n    settings = parse_config(argv[1])\n    run(settings)\n",
}


def good_answer(name: str) -> str:
    return (
        f"The function `{name}` is defined in this module. It reads its argument, processes it "
        f"and returns the result to the caller."
    )


def make_mit_repo(tables: Path, repo: str = "acme/tools") -> None:
    chunks = [chunk_row(repo, path, text) for path, text in CODE.items()]
    answers = []
    for chunk in chunks:
        name = chunk["text"].split("def ", 1)[1].split("(", 1)[0]
        answers.append(answer_row(chunk, f"What does {name} in {chunk['path']} do?", good_answer(name)))
        answers.append(
            answer_row(
                chunk,
                f"How would you test {name}?",
                f"Call `{name}` with a small input and assert on what it returns, "
                f"for example an empty value and a typical one.",
                theme="testing",
            )
        )
    config = chunks[0]
    answers += [
        answer_row(config, "Why does parse_config exist?", "I'm sorry, but I can't help with that request."),
        answer_row(config, "What does parse_config return?", "It returns the settings object built from the"),
        answer_row(
            config,
            "Which helpers does parse_config use?",
            "It calls `ConfigLoader.from_env`, then `validate_schema` and `merge_overrides`, "
            "and finally wraps everything in `AppSettings`.",
        ),
        answer_row(config, "What is parse_config for?", ""),
        # near-duplicate of the first question/answer about parse_config
        answer_row(config, "What does parse_config in the src/config.py file do?", good_answer("parse_config")),
    ]
    store_repo(tables, repo, chunks, answers)


def test_dataset_end_to_end(project: Path) -> None:
    settings = load_settings()
    make_mit_repo(settings.tables_dir)
    gpl_chunk = chunk_row(
        "gnu/thing", "main.c", "int add(int a, int b) { return a + b; }\n", license="GPL-3.0-only", language="c"
    )
    store_repo(
        settings.tables_dir,
        "gnu/thing",
        [gpl_chunk],
        [
            answer_row(
                gpl_chunk,
                "What does add do in main.c?",
                "The `add` function returns the sum of its two integer arguments.",
            )
        ],
        license="GPL-3.0-only",
    )
    instance = run_dataset_assets(project, ["acme/tools", "gnu/thing"])

    qa = TableStore(settings.tables_dir).read("qa_pairs", "acme/tools")
    assert qa is not None
    reasons = dict(zip(qa.column("question").to_pylist(), qa.column("reject_reason").to_pylist(), strict=True))
    assert reasons["Why does parse_config exist?"] == "refusal"
    assert reasons["What does parse_config return?"] == "truncated"
    assert reasons["Which helpers does parse_config use?"] == "not_grounded"
    assert reasons["What is parse_config for?"] == "empty_answer"
    # one of the two near-identical pairs survives (the first in path/line/answer-id order)
    pair = {
        reasons["What does parse_config in the src/config.py file do?"],
        reasons["What does parse_config in src/config.py do?"],
    }
    assert pair == {None, "near_duplicate"}

    out = settings.export_dir
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pairs"] == 8
    assert manifest["excluded_repos"]["gnu/thing"]["license"] == "GPL-3.0-only"
    assert manifest["rejections"]["license_excluded"] == 1
    card = (out / "README.md").read_text()
    assert "gnu/thing" in card and "GPL-3.0-only" in card and "near_duplicate" in card
    records = pq.read_table(out / "dataset.parquet")
    assert "gnu/thing" not in set(records.column("repo").to_pylist())
    # 4 files: every split gets at least one file, and no file is in two splits
    by_file: dict[tuple[str, str], set[str]] = {}
    for row in records.select(["repo", "path", "split"]).to_pylist():
        by_file.setdefault((row["repo"], row["path"]), set()).add(row["split"])
    assert all(len(s) == 1 for s in by_file.values())
    assert {next(iter(s)) for s in by_file.values()} == {"train", "valid", "test"}
    # the manifest (its split_files streamed from DuckDB) reads as json.dumps(indent=2, sort_keys=True) writes it
    text = (out / "manifest.json").read_text()
    assert text == json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    assert manifest["split_files"] == {
        split: sorted([repo, path] for (repo, path), splits in by_file.items() if splits == {split})
        for split in ("test", "train", "valid")
    }
    for name in ("mlx_chat", "mlx_completions", "alpaca", "sharegpt", "openai"):
        assert (out / name / "train.jsonl").is_file() and (out / name / "valid.jsonl").is_file()

    # the blocking checks ran and passed
    for check in ALL_CHECKS:
        evaluation = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [AssetCheckKey(AssetKey("training_dataset"), check)]
        )
        record = evaluation[AssetCheckKey(AssetKey("training_dataset"), check)]
        assert record.status.value == "SUCCEEDED", check
        assert record.event.asset_check_evaluation.passed  # type: ignore[union-attr]

    export = load_export(out)
    assert all(fn(export).passed for fn in ALL_CHECKS.values())

    # rejection counts per reason are Dagster metadata
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("qa_pairs"), asset_partitions=["acme/tools"]), limit=1
    ).records
    meta = records[0].asset_materialization.metadata  # type: ignore[union-attr]
    assert meta["rejections"].value == {
        "empty_answer": 1,
        "near_duplicate": 1,
        "not_grounded": 1,
        "refusal": 1,
        "truncated": 1,
    }
    assert meta["accepted"].value == 8 and meta["rejected_refusal"].value == 1
    event = instance.get_latest_materialization_event(AssetKey("training_dataset"))
    meta = event.asset_materialization.metadata  # type: ignore[union-attr]
    assert meta["exported_pairs"].value == 8 and meta["excluded_repos"].value["gnu/thing"]["pairs"] == 1
    # the run summary and `cicdllm status` show a materialization's `warning`
    assert meta["warning"].value == (
        "gnu/thing: 1 pairs excluded, licence 'GPL-3.0-only' is not in export.allowed_licenses"
    )
    # Dagster table conventions: true row counts (pairs, not summary rows), location, columns
    assert_table_metadata(instance, settings.tables_dir, out, ["qa_pairs"], ["acme/tools", "gnu/thing"], columns=False)


def test_a_repository_without_a_licence_is_excluded_with_a_hint_and_can_be_allowed(project: Path) -> None:
    """A user's own repository often has no LICENSE: its pairs are kept out (NOASSERTION), the
    warning says how to let them in, and adding NOASSERTION to the allow-list does."""
    settings = load_settings()
    make_mit_repo(settings.tables_dir, repo="me/private")
    TableStore(settings.tables_dir).write(
        "repositories",
        "me/private",
        pa.table(
            {
                "repo": ["me/private"],
                "url": ["file:///me/private"],
                "license": ["NOASSERTION"],
                "head_commit": ["c0ffee"],
            }
        ),
    )
    instance = run_dataset_assets(project, ["me/private"])
    meta = instance.get_latest_materialization_event(AssetKey("training_dataset")).asset_materialization.metadata  # type: ignore[union-attr]
    assert meta["exported_pairs"].value == 0
    assert "no licence found (NOASSERTION)" in meta["warning"].value
    assert "add NOASSERTION to export.allowed_licenses" in meta["warning"].value

    with (project / "cicdllm.yaml").open("a", encoding="utf-8") as handle:
        handle.write("export:\n  allowed_licenses: [MIT, NOASSERTION]\n")
    instance = run_dataset_assets(project, ["me/private"])
    meta = instance.get_latest_materialization_event(AssetKey("training_dataset")).asset_materialization.metadata  # type: ignore[union-attr]
    assert meta["exported_pairs"].value == 8 and "warning" not in meta


@pytest.mark.parametrize("check", sorted(ALL_CHECKS))
def test_checks_catch_broken_exports(project: Path, check: str) -> None:
    settings = load_settings()
    make_mit_repo(settings.tables_dir)
    run_dataset_assets(project, ["acme/tools"])
    out = settings.export_dir
    path = out / "dataset.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    if check == "schema_valid":
        rows[0].pop("theme")
    elif check == "no_empty_fields":
        rows[0]["answer"] = "  "
    elif check == "no_duplicates":
        rows[1]["question"], rows[1]["answer"] = rows[0]["question"], rows[0]["answer"]
    elif check == "no_secrets":
        rows[0]["answer"] += " Use the key AKIAIOSFODNN7EXAMPLE."
    else:
        rows[0]["split"] = "test" if rows[0]["split"] != "test" else "train"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "dataset.parquet").unlink()  # the checks now read the tampered jsonl
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if f["format"] != "parquet"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert not ALL_CHECKS[check](load_export(out)).passed
