"""Export formats read back by their consumers: mlx-lm, polars, pyarrow, datasets, csv; splits; CLI."""

from __future__ import annotations

import csv
import json
import os
import stat
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cicdllm_assets.cli.main import cli
from cicdllm_assets.config import load_settings
from cicdllm_assets.config.models import SplitConfig
from cicdllm_assets.export.card import hub_licenses, size_category
from cicdllm_assets.export.dataset import license_allowed
from cicdllm_assets.export.records import SPLITS
from cicdllm_assets.export.splits import assign_splits
from cicdllm_assets.export.validate import ALL_CHECKS, load_export
from cicdllm_assets.quality.pairs import filter_pairs
from cicdllm_assets.storage.tables import TableStore
from tests.export_fixtures import answer_row, chunk_row, export_dataset
from tests.llm_fixtures import make_tiny_model_dir

_WORD_TEXT = (
    "parser cache token stream buffer config index merge retry window schema commit branch socket "
    "thread future vector matrix kernel signal router handler plugin queue ledger"
)
WORDS = _WORD_TEXT.split()
TRICKY = 'It returns "a, b" — then,\nfor "quoted" values, it splits on commas, "and" keeps\r\nnewlines.'


def qa_table(n_files: int = 6, per_file: int = 2, repo: str = "acme/lib", tricky: bool = True) -> pa.Table:
    """An accepted qa_pairs table over ``n_files`` files."""
    chunks, answers = [], []
    for f in range(n_files):
        name = f"func_{f}"
        chunk = chunk_row(repo, f"pkg/mod_{f}.py", f"def {name}(x):\n    return x + {f}\n")
        chunks.append(chunk)
        for q in range(per_file):
            topic = " ".join(WORDS[(7 * f + 3 * q + k) % len(WORDS)] for k in range(8))
            answer = f"The function `{name}` adds {f} to its argument; think of it as {topic}." + (
                " " + TRICKY if tricky and f == 0 and q == 0 else ""
            )
            answers.append(answer_row(chunk, f"Case {q}: how does {name} relate to {topic}?", answer))
    result = filter_pairs(pa.Table.from_pylist(answers), pa.Table.from_pylist(chunks), 0.85)
    assert result.accepted == len(answers), result.rejections
    return result.table


@pytest.fixture
def exported(project: Path) -> tuple[Path, Any]:
    settings = load_settings()
    result = export_dataset(qa_table(), settings)
    return settings.export_dir, result


def test_parquet_loads_in_polars_pyarrow_and_datasets(exported: tuple[Path, Any]) -> None:
    import datasets
    import polars as pl

    out, result = exported
    path = out / "dataset.parquet"
    table = pq.read_table(path)
    frame = pl.read_parquet(path)
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(out.parent / "hf-cache"))
    assert table.num_rows == frame.height == len(ds) == result.exported_pairs == 12
    assert set(ds.column_names) == set(table.column_names)
    assert sorted(frame["answer"].to_list()) == sorted(table.column("answer").to_pylist())
    assert any(TRICKY in a for a in ds["answer"])


def test_hub_configs_load_with_datasets(exported: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The card's YAML front matter makes the folder loadable as it is: default config and each format."""
    import datasets
    import yaml

    out, result = exported
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["license"] == ["mit"] and meta["size_categories"] == ["n<1K"]
    assert {"question-answering", "text-generation"} <= set(meta["task_categories"]) and "en" in meta["language"]
    per_split = ["mlx_chat", "mlx_completions", "alpaca", "sharegpt", "openai"]
    assert [c["config_name"] for c in meta["configs"]] == per_split
    assert [c["config_name"] for c in meta["configs"] if c.get("default")] == ["mlx_chat"]
    counts = {s: n for s, n in result.split_counts().items() if n}
    assert set(counts) == {"train", "valid", "test"}
    cache = str(out.parent / "hf-cache")
    default = datasets.load_dataset(str(out), cache_dir=cache)
    assert {split: len(ds) for split, ds in default.items()} == counts
    assert default.column_names["train"] == ["messages"]
    columns = {
        "mlx_chat": ["messages"],
        "openai": ["messages"],
        "mlx_completions": ["prompt", "completion"],
        "alpaca": ["instruction", "input", "output"],
        "sharegpt": ["conversations", "system"],
    }
    for fmt in per_split:
        loaded = datasets.load_dataset(str(out), fmt, cache_dir=cache)
        assert {split: len(ds) for split, ds in loaded.items()} == counts, fmt
        assert sorted(loaded.column_names["train"]) == sorted(columns[fmt]), fmt


def test_exported_files_honour_the_umask(project: Path) -> None:
    settings = load_settings()
    old = os.umask(0o022)
    try:
        export_dataset(qa_table(tricky=False), settings)
    finally:
        os.umask(old)
    files = [p for p in settings.export_dir.rglob("*") if p.is_file()]
    assert len(files) >= 19
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o644)}


def test_hub_license_ids() -> None:
    assert hub_licenses(["MIT", "Apache-2.0 OR MIT"]) == ["apache-2.0", "mit"]
    assert hub_licenses(["GPL-3.0-only", "LicenseRef-custom"]) == ["gpl-3.0", "other"]
    assert size_category(999) == "n<1K" and size_category(1000) == "1K<n<10K"


def test_csv_round_trips_quotes_commas_and_newlines(exported: tuple[Path, Any]) -> None:
    import polars as pl

    out, result = exported
    path = out / "dataset.csv"
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = pq.read_table(out / "dataset.parquet").column("answer").to_pylist()
    assert len(expected) == result.exported_pairs
    assert [r["answer"] for r in rows] == expected
    assert any(TRICKY in r["answer"] for r in rows)
    assert pacsv.read_csv(path).column("answer").to_pylist() == expected
    assert pl.read_csv(path)["answer"].to_list() == expected


def test_mlx_lm_loads_chat_and_completions(exported: tuple[Path, Any], tmp_path: Path) -> None:
    from mlx_lm.tuner.datasets import ChatDataset, CompletionsDataset, load_dataset
    from mlx_lm.utils import load_tokenizer

    out, result = exported
    tokenizer = load_tokenizer(make_tiny_model_dir(tmp_path / "tiny"))
    counts = result.split_counts()
    for fmt, cls in (("mlx_chat", ChatDataset), ("mlx_completions", CompletionsDataset)):
        args = SimpleNamespace(data=str(out / fmt), train=True, test=True, hf_dataset=False, mask_prompt=True)
        train, valid, test = load_dataset(args, tokenizer)
        assert (len(train), len(valid), len(test)) == (counts["train"], counts["valid"], counts["test"])
        for dataset in (train, valid, test):
            assert isinstance(dataset, cls)
            for i in range(len(dataset)):
                tokens, offset = dataset.process(dataset[i])
                assert 0 < offset < len(tokens)


def test_other_formats_shapes(exported: tuple[Path, Any]) -> None:
    out, _ = exported
    train = [json.loads(line) for line in (out / "alpaca" / "train.jsonl").read_text().splitlines()]
    assert set(train[0]) == {"instruction", "input", "output"} and "```python" in train[0]["input"]
    share = json.loads((out / "sharegpt" / "train.jsonl").read_text().splitlines()[0])
    assert [c["from"] for c in share["conversations"]] == ["human", "gpt"]
    chat = json.loads((out / "openai" / "train.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant"]
    records = [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]
    assert {"repo", "path", "commit", "license", "model_id", "template_hash"} <= set(records[0])
    card = (out / "README.md").read_text()
    for text in ("acme/lib", "train", "code_explanation", "tiny-test-model", "MIT", "mlx_chat"):
        assert text in card
    export = load_export(out)
    assert all(check(export).passed for check in ALL_CHECKS.values())


def test_splits_are_disjoint_by_file_and_deterministic() -> None:
    files = [("r", f"f{i}.py") for i in range(200)]
    first = assign_splits(files, SplitConfig())
    assert first == assign_splits(list(reversed(files)), SplitConfig())
    sizes = {s: sum(1 for v in first.values() if v == s) for s in ("train", "valid", "test")}
    assert sizes["train"] > sizes["valid"] > 0 and sizes["test"] > 0
    # tiny datasets: 3 files fill every split; 2 files cannot
    for n in (3, 4, 5):
        tiny = assign_splits(files[:n], SplitConfig())
        assert set(tiny.values()) == {"train", "valid", "test"}
    assert "train" in set(assign_splits(files[:2], SplitConfig()).values())


def test_tiny_dataset_omits_empty_split_files(project: Path) -> None:
    settings = load_settings()
    result = export_dataset(qa_table(n_files=1, tricky=False), settings, formats=["mlx_chat", "jsonl"])
    out = settings.export_dir
    counts = result.split_counts()
    assert sum(counts.values()) == 2 and sorted(counts.values()) == [0, 0, 2]
    present = {p.name for p in (out / "mlx_chat").iterdir()}
    assert present == {f"{s}.jsonl" for s, c in counts.items() if c}
    assert any("empty" in note for note in result.notes)
    text = (out / "manifest.json").read_text()
    manifest = json.loads(text)
    assert text == json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    assert sorted(len(files) for files in manifest["split_files"].values()) == [0, 0, 1]
    # a later, bigger export removes nothing it wrote, and a smaller one removes stale files
    export_dataset(qa_table(n_files=6, tricky=False), settings, formats=["mlx_chat"])
    assert {p.name for p in (out / "mlx_chat").iterdir()} == {"train.jsonl", "valid.jsonl", "test.jsonl"}
    assert not (out / "dataset.jsonl").exists()


def test_license_expressions() -> None:
    allowed = ["MIT", "Apache-2.0"]
    assert license_allowed("MIT", allowed) and license_allowed("mit", allowed)
    assert license_allowed("GPL-3.0-only OR MIT", allowed)
    assert not license_allowed("MIT AND GPL-3.0-only", allowed)
    assert not license_allowed("NOASSERTION", allowed) and not license_allowed("", allowed)


def test_cli_export(project: Path) -> None:
    settings = load_settings()
    TableStore(settings.tables_dir).write("qa_pairs", "acme/lib", qa_table())
    runner = CliRunner()
    out = project / "custom-out"
    result = runner.invoke(cli, ["export", "--format", "parquet", "--format", "mlx_chat", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Exported 12 pairs" in result.output and "dataset.parquet" in result.output
    assert (out / "dataset.parquet").is_file() and (out / "mlx_chat" / "train.jsonl").is_file()
    assert not (out / "dataset.csv").exists()
    as_json = runner.invoke(cli, ["export", "--json"])
    assert as_json.exit_code == 0, as_json.output
    summary = json.loads(as_json.output)
    assert summary["pairs"] == 12 and summary["out_dir"] == str(settings.export_dir)
    assert {f["format"] for f in summary["files"]} == set(settings.config.export.formats)
    bad = runner.invoke(cli, ["export", "--format", "xml"])
    assert bad.exit_code == 2


def test_cli_export_without_tables(project: Path) -> None:
    result = CliRunner().invoke(cli, ["export"])
    assert result.exit_code == 1 and "materialize qa_pairs first" in result.output


def test_cli_export_follows_repos_txt(project: Path) -> None:
    from cicdllm_assets.repos.repos_file import parse_repos_text

    settings = load_settings()
    (project / "kept").mkdir()
    (project / "repos.txt").write_text("kept\n", encoding="utf-8")
    kept = parse_repos_text("kept\n", project)[0].key
    store = TableStore(settings.tables_dir)
    store.write("qa_pairs", kept, qa_table(repo=kept))
    store.write("qa_pairs", "removed-repo", qa_table(n_files=2, repo="removed-repo", tricky=False))
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    assert "Exported 12 pairs" in result.output and "Skipped 1 stored repo(s)" in result.output
    everything = runner.invoke(cli, ["export", "--format", "jsonl", "--all-partitions", "--json"])
    assert everything.exit_code == 0, everything.output
    summary = json.loads(everything.output)
    assert summary["skipped_partitions"] == [] and summary["pairs"] > 12


def test_failed_export_leaves_previous_files_and_no_temp_files(project: Path) -> None:
    from cicdllm_assets.export.writers import write_exports

    settings = load_settings()
    export_dataset(qa_table(), settings)
    out = settings.export_dir
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    good = pq.read_table(out / "dataset.parquet").to_batches()

    def failing() -> Any:
        yield from good
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_exports(failing(), ["jsonl", "csv", "parquet", "mlx_chat"], out)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in out.rglob(".*.tmp")]


def test_records_sorted_in_idx_chunks_match_one_sort(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ordered`` is sorted ORDER_CHUNK idx values at a time; the files equal those of one sort."""
    from cicdllm_assets.export import dataset

    settings = load_settings()
    data = ["dataset.jsonl", "dataset.csv", *(f"{fmt}/{s}.jsonl" for fmt in ("mlx_chat", "alpaca") for s in SPLITS)]

    def export(chunk: int) -> dict[str, bytes]:
        monkeypatch.setattr(dataset, "ORDER_CHUNK", chunk)
        export_dataset(qa_table(n_files=9, per_file=3), settings, formats=["jsonl", "csv", "mlx_chat", "alpaca"])
        out = settings.export_dir
        return {name: (out / name).read_bytes() for name in data if (out / name).exists()}

    whole, chunked = export(10**9), export(4)
    assert len(whole) >= 5 and chunked == whole
    ids = [json.loads(line)["id"] for line in whole["dataset.jsonl"].decode().splitlines()]
    assert len(ids) == 27 and len(set(ids)) == 27
