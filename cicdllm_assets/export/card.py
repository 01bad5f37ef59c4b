"""The dataset card (``README.md`` in the export dir): what is in the dataset and how it was made."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from cicdllm_assets.config import Settings
from cicdllm_assets.export.records import SPLITS

if TYPE_CHECKING:
    from cicdllm_assets.export.dataset import DatasetResult

_FORMAT_DOCS = {
    "jsonl": "`dataset.jsonl` — full records with provenance (repo, path, lines, commit, licence, model, template)",
    "csv": "`dataset.csv` — the same records, RFC 4180 quoting (commas, quotes and newlines round-trip)",
    "parquet": "`dataset.parquet` — the same records (zstd); loads in polars, pyarrow and Hugging Face `datasets`",
    "mlx_chat": "`mlx_chat/{train,valid,test}.jsonl` — `{\"messages\": [system, user, assistant]}` for `mlx_lm.lora`",
    "mlx_completions": "`mlx_completions/{train,valid,test}.jsonl` — `{\"prompt\", \"completion\"}` for `mlx_lm.lora`",
    "alpaca": "`alpaca/{train,valid,test}.jsonl` — `{\"instruction\", \"input\", \"output\"}` (input = the code)",
    "sharegpt": "`sharegpt/{train,valid,test}.jsonl` — `{\"conversations\": [human, gpt], \"system\"}`",
    "openai": "`openai/{train,valid,test}.jsonl` — OpenAI chat fine-tuning `{\"messages\": [...]}`",
}


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "_none_\n"
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_card(result: DatasetResult, formats: list[str], settings: Settings) -> str:
    """Markdown describing counts, provenance, filters, licences and formats of an export."""
    cfg = settings.config
    records = result.records
    splits = result.split_counts()
    parts: list[str] = ["# cicdllm question/answer dataset\n\n"]
    parts.append(
        f"{result.exported_pairs} question/answer pairs about source code, generated from "
        f"{len({r for r in records.column('repo').to_pylist()})} repositories "
        f"({splits['train']} train, {splits['valid']} valid, {splits['test']} test).\n\n"
    )

    per_repo: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    for repo, split, count in result.counts_by("repo", "split"):
        per_repo[repo][split] = count
    parts.append("## Pairs per repository and split\n\n")
    parts.append(_table(["repo", *SPLITS, "total"],
                        [[repo, *(c[s] for s in SPLITS), sum(c.values())] for repo, c in sorted(per_repo.items())]))

    parts.append("\n## Pairs per theme\n\n")
    parts.append(_table(["theme", "pairs"], [[t, n] for t, n in result.counts_by("theme")]))

    parts.append("\n## Sources\n\n")
    source_rows = [[repo, lic, commit, n] for repo, lic, commit, n in result.counts_by("repo", "license", "commit")]
    parts.append(_table(["repo", "licence", "commit", "pairs"], source_rows))

    parts.append("\n## Licences\n\n")
    parts.append(f"Allowed (`export.allowed_licenses`): {', '.join(cfg.export.allowed_licenses) or '(none)'}.\n\n")
    if result.excluded_repos:
        parts.append("Excluded repositories:\n\n")
        parts.append(_table(["repo", "licence", "pairs excluded", "reason"],
                            [[repo, i["license"], i["pairs"], i["reason"]]
                             for repo, i in result.excluded_repos.items()]))
    else:
        parts.append("No repository was excluded by its licence.\n")

    parts.append("\n## Generation\n\n")
    models = sorted({m for m in records.column("model_id").to_pylist() if m}) if records.num_rows else []
    parts.append(f"- Model(s): {', '.join(models) or '(none)'} (backend `{cfg.llm.backend}`, `llm.model` = "
                 f"`{cfg.llm.model}`)\n")
    templates = result.counts_by("theme", "template_hash")
    parts.append("- Answer prompt templates (theme: sha256 prefix): "
                 + (", ".join(f"{t}: `{h}`" for t, h, _ in templates) or "(none)") + "\n")
    parts.append(f"- System prompt: {cfg.export.system_prompt!r}\n")

    parts.append("\n## Quality filters\n\n")
    parts.append(
        f"{result.input_pairs} generated pairs in, {result.accepted_pairs} accepted by the per-pair filters, "
        f"{result.exported_pairs} exported. Rejections by reason:\n\n"
    )
    parts.append(_table(["reason", "pairs"], [[k, v] for k, v in result.rejections.items()]))
    parts.append(
        "\nFilters: empty question/answer; truncated question; too short; answers that only echo the chunk; "
        "refusals (\"I'm sorry, I can't…\", \"As an AI…\"); repetitive (looping) answers; "
        "truncated (length limit reached, unbalanced code fence, ends mid-sentence); not grounded "
        "(under 60 % of the identifiers in the answer's code and backticks occur in the chunk, its imports, "
        "path or question); exact duplicates and near-duplicates (MinHash LSH on character 5-grams of "
        f"question + answer, Jaccard >= {cfg.export.near_duplicate_threshold}) within and across repositories; "
        "licence allow-list.\n"
    )
    parts.append("\n## Secrets\n\n")
    total = sum(result.redactions.values())
    parts.append(
        "Code chunks are redacted when they are cut; every exported text field is scanned again "
        "(detect-secrets plugins plus PEM key blocks, config values and URL credentials) and each "
        f"secret replaced by `[REDACTED:<type>]`. Redacted at export: {total}"
        + (" (" + ", ".join(f"{k}: {v}" for k, v in result.redactions.items()) + ")" if total else "")
        + ".\n"
    )

    parts.append("\n## Splits\n\n")
    parts.append(
        "Assigned by source file: SHA-256 of (repo, path) mapped to [0, 1) and cut by the ratios "
        f"train {cfg.export.split.train:g} / valid {cfg.export.split.valid:g} / test {cfg.export.split.test:g}, "
        "so no file contributes to two splits. When 3 or more files exist and a split with a non-zero "
        "ratio is empty, the file with the smallest hash of the largest split moves into it. "
        "Empty splits get no per-split file (mlx-lm trains without validation when `valid.jsonl` is absent, "
        "but fails on an empty one).\n"
    )
    for note in result.notes:
        parts.append(f"\n> Note: {note}\n")

    parts.append("\n## Formats\n\n")
    for fmt in formats:
        parts.append(f"- {_FORMAT_DOCS.get(fmt, fmt)}\n")
    parts.append("\nFiles:\n\n")
    parts.append(_table(["file", "split", "rows", "bytes"],
                        [[str(f.path.relative_to(result.out_dir)), f.split or "all", f.rows, f.bytes]
                         for f in result.files]))
    parts.append(
        "\nTrain with mlx-lm: `mlx_lm.lora --model <model> --train --data <export dir>/mlx_chat` "
        "(or `mlx_completions`).\n"
    )
    return "".join(parts)


def set_card_section(card: str, name: str, markdown: str) -> str:
    """``card`` with the section ``name`` (between HTML comment markers) replaced or appended.

    Sections added after export (e.g. the evaluation) live between
    ``<!-- cicdllm:<name> -->`` and ``<!-- /cicdllm:<name> -->``; re-exporting drops them.
    """
    start, end = f"<!-- cicdllm:{name} -->", f"<!-- /cicdllm:{name} -->"
    block = f"{start}\n{markdown.rstrip()}\n{end}\n"
    if start in card and end in card:
        head, rest = card.split(start, 1)
        return head + block + rest.split(end, 1)[1].lstrip("\n")
    return card.rstrip("\n") + "\n\n" + block
