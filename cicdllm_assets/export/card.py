"""The dataset card (``README.md`` in the export dir): what is in the dataset and how it was made."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cicdllm_assets.config.models import ExportConfig, JudgeConfig, LLMConfig
from cicdllm_assets.export.judge_report import judge_markdown
from cicdllm_assets.export.plots import plots_markdown
from cicdllm_assets.export.quality_report import variety_markdown
from cicdllm_assets.export.records import SPLITS
from cicdllm_assets.export.writers import SPLIT_FORMATS

if TYPE_CHECKING:
    from cicdllm_assets.export.dataset import DatasetResult

_FORMAT_DOCS = {
    "jsonl": "`dataset.jsonl` — full records with provenance (repo, path, lines, commit, licence, model, template)",
    "csv": "`dataset.csv` — the same records, RFC 4180 quoting (commas, quotes and newlines round-trip)",
    "parquet": "`dataset.parquet` — the same records (zstd); loads in polars, pyarrow and Hugging Face `datasets`",
    "mlx_chat": '`mlx_chat/{train,valid,test}.jsonl` — `{"messages": [system, user, assistant]}` for `mlx_lm.lora`',
    "mlx_completions": '`mlx_completions/{train,valid,test}.jsonl` — `{"prompt", "completion"}` for `mlx_lm.lora`',
    "alpaca": '`alpaca/{train,valid,test}.jsonl` — `{"instruction", "input", "output"}` (input = the code)',
    "sharegpt": '`sharegpt/{train,valid,test}.jsonl` — `{"conversations": [human, gpt], "system"}`',
    "openai": '`openai/{train,valid,test}.jsonl` — OpenAI chat fine-tuning `{"messages": [...]}`',
}


# SPDX ids (lower-cased, "-only"/"-or-later" dropped) the Hugging Face Hub knows as ``license`` values.
HUB_LICENSES = frozenset(
    {
        "apache-2.0",
        "mit",
        "bsd",
        "bsd-2-clause",
        "bsd-3-clause",
        "bsd-3-clause-clear",
        "isc",
        "unlicense",
        "cc0-1.0",
        "cc-by-4.0",
        "cc-by-sa-4.0",
        "cc-by-nc-4.0",
        "gpl-2.0",
        "gpl-3.0",
        "lgpl-2.1",
        "lgpl-3.0",
        "lgpl-lr",
        "agpl-3.0",
        "mpl-2.0",
        "epl-1.0",
        "epl-2.0",
        "bsl-1.0",
        "artistic-2.0",
        "wtfpl",
        "zlib",
        "postgresql",
        "osl-3.0",
        "ecl-2.0",
        "afl-3.0",
        "eupl-1.1",
        "ofl-1.1",
        "ms-pl",
        "ncsa",
        "pddl",
        "odbl",
    }
)
DEFAULT_CONFIG = "mlx_chat"
# Hub size buckets: (upper bound, label).
_SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
)


def hub_licenses(expressions: Iterable[str]) -> list[str]:
    """Hub ``license`` ids for SPDX expressions (``other`` for any term the Hub does not know)."""
    ids: set[str] = set()
    for expression in expressions:
        for term in re.split(r"\s+(?:OR|AND|WITH)\s+|[()]", expression, flags=re.IGNORECASE):
            term = term.strip().lower()
            if term:
                term = re.sub(r"-(only|or-later)$", "", term).removesuffix("+")
                ids.add(term if term in HUB_LICENSES else "other")
    return sorted(ids) or ["other"]


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` bucket for a row count."""
    return next((label for bound, label in _SIZE_CATEGORIES if rows < bound), "n>1T")


def _default_config(formats: list[str]) -> str | None:
    """``mlx_chat`` if exported, else the first per-split format (None if there is none)."""
    configs = [fmt for fmt in formats if fmt in SPLIT_FORMATS]
    return DEFAULT_CONFIG if DEFAULT_CONFIG in configs else (configs[0] if configs else None)


def front_matter(result: DatasetResult, formats: list[str]) -> str:
    """YAML front matter for the Hub: licence, task, language, size, one config per per-split format.

    Every per-split format is its own config (``data_files`` per split), so
    ``datasets.load_dataset(dir)`` loads the default config and never mixes formats.
    Values are JSON scalars, which are valid YAML.
    """
    licenses = hub_licenses(lic for lic, _ in result.counts_by("license"))
    lines = ["---", "license:", *(f"- {lic}" for lic in licenses)]
    if "other" in licenses:
        names = sorted({lic for lic, _ in result.counts_by("license")})
        lines.append(f"license_name: {json.dumps(' AND '.join(names) or 'NOASSERTION')}")
    lines += [
        "task_categories:",
        "- question-answering",
        "- text-generation",
        "language:",
        "- en",
        "- code",
        "tags:",
        "- code",
        "- fine-tuning",
        "- mlx",
        "size_categories:",
        f"- {size_category(result.exported_pairs)}",
        "pretty_name: cicdllm question/answer dataset",
    ]
    configs = [fmt for fmt in formats if fmt in SPLIT_FORMATS]
    default = _default_config(formats)
    if configs:
        lines.append("configs:")
    for fmt in configs:
        files = [f for f in result.files if f.format == fmt and f.split]
        lines.append(f"- config_name: {fmt}")
        if fmt == default:
            lines.append("  default: true")
        lines.append("  data_files:")
        for f in files:
            lines += [f"  - split: {f.split}", f"    path: {json.dumps(f.path.relative_to(result.out_dir).as_posix())}"]
    return "\n".join([*lines, "---", ""]) + "\n"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "_none_\n"
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def blocked_requests(state_target: str | Path) -> int:
    """Generation items the secret gate refused to send (ledger rows failed with ``secret``
    in the state store at ``state_target``)."""
    from cicdllm_assets.generation.ledger import Ledger
    from cicdllm_assets.storage.state import open_existing_state

    state = open_existing_state(state_target)
    if state is None:
        return 0
    with state:
        return Ledger(state).failure_counts().get("secret", 0)


def render_card(
    result: DatasetResult,
    formats: list[str],
    export: ExportConfig,
    *,
    llm: LLMConfig,
    judge: JudgeConfig,
    state_target: str | Path,
) -> str:
    """Markdown describing counts, provenance, filters, licences and formats of an export: ``export``,
    ``llm`` and ``judge`` are the config sections it reports, ``state_target`` the state store whose
    ledger counts blocked requests."""
    splits = result.split_counts()
    parts: list[str] = [front_matter(result, formats), "# cicdllm question/answer dataset\n\n"]
    parts.append(
        f"{result.exported_pairs} question/answer pairs about source code, generated from "
        f"{len(result.counts_by('repo'))} repositories "
        f"({splits['train']} train, {splits['valid']} valid, {splits['test']} test).\n\n"
    )

    per_repo: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    for repo, split, count in result.counts_by("repo", "split"):
        per_repo[repo][split] = count
    parts.append("## Pairs per repository and split\n\n")
    parts.append(
        _table(
            ["repo", *SPLITS, "total"],
            [[repo, *(c[s] for s in SPLITS), sum(c.values())] for repo, c in sorted(per_repo.items())],
        )
    )

    parts.append("\n## Pairs per theme\n\n")
    parts.append(_table(["theme", "pairs"], [[t, n] for t, n in result.counts_by("theme")]))

    parts.append("\n## Sources\n\n")
    source_rows = [[repo, lic, commit, n] for repo, lic, commit, n in result.counts_by("repo", "license", "commit")]
    parts.append(_table(["repo", "licence", "commit", "pairs"], source_rows))

    parts.append("\n## Licences\n\n")
    parts.append(f"Allowed (`export.allowed_licenses`): {', '.join(export.allowed_licenses) or '(none)'}.\n\n")
    if result.excluded_repos:
        parts.append("Excluded repositories:\n\n")
        parts.append(
            _table(
                ["repo", "licence", "pairs excluded", "reason"],
                [[repo, i["license"], i["pairs"], i["reason"]] for repo, i in result.excluded_repos.items()],
            )
        )
    else:
        parts.append("No repository was excluded by its licence.\n")

    parts.append("\n## Generation\n\n")
    models = [m for m, _ in result.counts_by("model_id") if m]
    parts.append(
        f"- Model(s): {', '.join(models) or '(none)'} (backend `{llm.backend}`, `llm.model` = `{llm.model}`)\n"
    )
    templates = result.counts_by("theme", "template_hash")
    parts.append(
        "- Answer prompt templates (theme: sha256 prefix): "
        + (", ".join(f"{t}: `{h}`" for t, h, _ in templates) or "(none)")
        + "\n"
    )
    parts.append(f"- System prompt: {export.system_prompt!r}\n")

    parts.append("\n## Quality filters\n\n")
    parts.append(
        f"{result.input_pairs} generated pairs in, {result.accepted_pairs} accepted by the per-pair filters, "
        f"{result.exported_pairs} exported. Rejections by reason:\n\n"
    )
    parts.append(_table(["reason", "pairs"], [[k, v] for k, v in result.rejections.items()]))
    parts.append(
        "\nFilters: empty question/answer; truncated question; too short; answers that only echo the chunk; "
        'refusals ("I\'m sorry, I can\'t…", "As an AI…"); repetitive (looping) answers; '
        "truncated (length limit reached, unbalanced code fence, ends mid-sentence); code_invalid (a Python "
        "code block does not parse); not grounded (under "
        f"{export.min_grounded_ratio:.0%} of the identifiers in the answer's code and "
        "backticks occur in the chunk, its imports, path, question or the repository's symbol index); "
        "exact duplicates and near-duplicates (MinHash LSH on character 5-grams of "
        f"question + answer, Jaccard >= {export.near_duplicate_threshold}) within and across repositories; "
        "licence allow-list.\n"
    )
    parts.append("\n## Question variety\n\n")
    parts.append(
        "Each chunk's questions are planned over six kinds (how to use it, why it is designed so, bad input "
        "and errors, how to extend it, how to test it, callers and callees) so one chunk's questions do not "
        "repeat a kind; near-duplicate questions of a chunk are dropped before answers are generated.\n\n"
    )
    parts.append(variety_markdown(result))
    parts.append("\n## Plots\n\n")
    parts.append(plots_markdown(result))
    parts.append("\n## Judge\n\n")
    parts.append(judge_markdown(result.judge, result.rejections, judge.threshold, judge.enabled))
    parts.append("\n## Secrets\n\n")
    total = sum(result.redactions.values())
    parts.append(
        "Code chunks are redacted when they are cut; every exported text field is scanned again "
        "(detect-secrets plugins plus PEM key blocks, config values and URL credentials) and each "
        f"secret replaced by `[REDACTED:<type>]`. Redacted at export: {total}"
        + (" (" + ", ".join(f"{k}: {v}" for k, v in result.redactions.items()) + ")" if total else "")
        + ".\n"
    )
    blocked = blocked_requests(state_target)
    parts.append(
        "Every rendered request is scanned once more just before it is sent to the model; a request "
        f"that still holds a secret is never sent (failure category `secret`). Blocked items: {blocked}.\n"
    )

    parts.append("\n## Splits\n\n")
    parts.append(
        "Assigned by source file: SHA-256 of (repo, path) mapped to [0, 1) and cut by the ratios "
        f"train {export.split.train:g} / valid {export.split.valid:g} / test {export.split.test:g}, "
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
    parts.append(
        _table(
            ["file", "split", "rows", "bytes"],
            [[str(f.path.relative_to(result.out_dir)), f.split or "all", f.rows, f.bytes] for f in result.files],
        )
    )
    parts.append(
        "\nTrain with mlx-lm: `mlx_lm.lora --model <model> --train --data <export dir>/mlx_chat` "
        "(or `mlx_completions`).\n"
        '\nLoad with Hugging Face `datasets`: `load_dataset("<export dir>")` gives the default config'
        + (f" (`{default}`)" if (default := _default_config(formats)) else "")
        + ' with its splits; `load_dataset("<export dir>", "<format>")` one per-split format. '
        "The full records are in `dataset.parquet` (one file, `split` column).\n"
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
