"""Dataset quality benchmark: old prompts vs new on this repository, embedded model, one run.

    .venv/bin/python benchmarks/quality.py [--chunks 8] [--json]

Runs ``cicdllm run`` twice on this repository's Python package (``cicdllm_assets/**/*.py``,
both pinned to the commit HEAD is at when the benchmark starts), same chunks, model (the
embedded SmolLM2-135M; `cicdllm model prepare` first), sampling and bounds as the shipped
``make run`` demo:

* **old**: the prompts before issue 11 (``benchmarks/baseline_prompts/``: example questions
  "What does X return?", no repo-wide context: ``generation.repo_context_tokens: 0``);
* **new**: the shipped ``prompts/`` (planned question kinds as example questions, ``{repo_context}``).

Both datasets are measured with the same checks, over every generated answer ("raw") and over
the pairs the filters accept ("dataset": what the export holds):

* share of Python code blocks in answers that parse (``ast``);
* share of answers whose code identifiers all resolve (chunk, its imports, path, question or
  the repository's symbol index; answers that name no identifier count as resolved);
* distinct-2 of the generated questions; and how many question items parsed.

Distinct-n falls as a set grows (each new question can only repeat more n-grams), and the two
runs parse different numbers of questions, so the distinct-2 target compares the runs at equal
size: each run's distinct-2 is the mean over ``DRAWS`` seeded random subsets of as many questions
as the smaller run has (the smaller run's own value is exact). The whole-set values are printed too.

Targets (new run): code blocks parse >= 90 % and identifiers resolve >= 90 % in the dataset,
distinct-2 of questions (at equal size) >= 1.5x the old prompts', at least as many question items parse as with
the old prompts. Exits 1 when a target is missed.

Then the judge (``quality.judge``, the embedded model judging itself through ``backend: same``,
threshold 1 and ``keep_unscored`` so it rejects nothing) scores the new run's accepted pairs in a
third ``cicdllm run`` of the same project (generation is all in the ledger: only the judge runs);
printed: the share of judged pairs whose three scores are all >= 3, and how many it could score.
No target: a 135M model is a weak judge (docs/dataset.md), a larger one goes in ``quality.judge.llm``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, cast

import pyarrow as pa

from cicdllm_assets.config import load_settings
from cicdllm_assets.generation.chunks import Chunk
from cicdllm_assets.llm.models.paths import embedded_model_dir
from cicdllm_assets.quality.filters import python_blocks
from cicdllm_assets.quality.grounding import grounding_score, repo_symbol_index
from cicdllm_assets.quality.variety import distinct_n
from cicdllm_assets.storage.contract import CodeChunkRow
from cicdllm_assets.storage.tables import TableStore

ROOT = Path(__file__).resolve().parent.parent
BASELINE_PROMPTS = ROOT / "benchmarks" / "baseline_prompts"
TARGET_PARSE = 0.9
TARGET_RESOLVE = 0.9
TARGET_DISTINCT2_RATIO = 1.5
THEMES = ["code_explanation", "usage_examples"]
DRAWS = 200


def distinct_2_at_size(texts: list[str], size: int, draws: int = DRAWS) -> float:
    """Mean distinct-2 of ``draws`` seeded random subsets of ``size`` of ``texts`` (exact when
    ``size`` is all of them)."""
    if size >= len(texts):
        return distinct_n(texts, 2)
    rng = random.Random(0)
    return sum(distinct_n(rng.sample(texts, size), 2) for _ in range(draws)) / draws


def _write_project(
    project: Path, prompts: Path, chunks: int, repo_context_tokens: int, models: Path, commit: str
) -> None:
    """A project on this repository with the demo's generation bounds."""
    from ruamel.yaml import YAML

    config = {
        "storage": {"data_dir": "data", "dagster_home": "dagster_home"},
        "generation": {
            "max_chunks_per_repo": chunks,
            "questions_per_chunk": 2,
            "themes": THEMES,
            "question_max_tokens": 128,
            "answer_max_tokens": 256,
            "temperature": 0.3,
            "repo_context_tokens": repo_context_tokens,
        },
        "llm": {"backend": "mlx", "model": "embedded"},
        "export": {"out_dir": "dataset", "formats": ["jsonl"]},
    }
    with (project / "cicdllm.yaml").open("w", encoding="utf-8") as handle:
        YAML(typ="safe").dump(config, handle)
    shutil.copytree(prompts, project / "prompts")
    (project / "repos.txt").write_text(f'"{ROOT}"@{commit} include=cicdllm_assets/**/*.py\n', encoding="utf-8")
    (project / "data" / "models").mkdir(parents=True)
    (project / "data" / "models" / models.name).symlink_to(models)


def _enable_judge(project: Path) -> None:
    """Turn on the judge (the same backend) without letting it reject anything."""
    from ruamel.yaml import YAML

    path = project / "cicdllm.yaml"
    yaml = YAML(typ="safe")
    config = yaml.load(path.read_text(encoding="utf-8"))
    config["quality"] = {"judge": {"enabled": True, "threshold": 1, "keep_unscored": True, "llm": {"backend": "same"}}}
    with path.open("w", encoding="utf-8") as handle:
        yaml.dump(config, handle)


def judge_figures(project: Path, repo: str) -> dict[str, Any]:
    """Pairs judged, pairs scored, and the share of scored pairs with every score >= 3."""
    table = TableStore(load_settings(project / "cicdllm.yaml").tables_dir).read("qa_pairs", repo)
    if table is None:
        raise SystemExit(f"{project}: no qa_pairs table for {repo}")
    accepted = [p for p in table.to_pylist() if p["accepted"]]
    scores = [(p["judge_correctness"], p["judge_groundedness"], p["judge_usefulness"]) for p in accepted]
    scored = [s for s in scores if None not in s]
    good = sum(1 for s in scored if min(s) >= 3)
    return {"pairs": len(accepted), "scored": len(scored), "share_ge_3": good / len(scored) if scored else None}


def _run(project: Path) -> tuple[str, float]:
    """``cicdllm run --json`` in ``project`` (a real process); returns (repo partition, seconds)."""
    env = {**os.environ, "CICDLLM_CONFIG": str(project / "cicdllm.yaml"), "DAGSTER_HOME": str(project / "dagster_home")}
    start = time.perf_counter()
    out = subprocess.run(
        [str(Path(sys.executable).parent / "cicdllm"), "run", "--json"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"cicdllm run failed in {project}:\n{out.stderr[-3000:]}")
    (summary,) = json.loads(out.stdout)["repos"]
    return str(summary["name"]), seconds


def _answer_figures(rows: list[dict[str, Any]], chunks: dict[str, Chunk], index: frozenset[str]) -> dict[str, Any]:
    blocks = parsed = resolved = 0
    unresolved: list[str] = []
    for row in rows:
        chunk = chunks.get(str(row["chunk_key"]))
        language = chunk.language if chunk else "python"
        for block in python_blocks(str(row["answer"]), language):
            if not block.strip():
                continue
            blocks += 1
            try:
                ast.parse(textwrap.dedent(block))
                parsed += 1
            except (SyntaxError, ValueError):
                pass
        score = grounding_score(
            str(row["answer"]),
            chunk.text if chunk else "",
            chunk.imports if chunk else "",
            str(row["question"]),
            str(row["path"]),
            index,
        )
        resolved += not score.missing
        unresolved += score.missing
    return {
        "answers": len(rows),
        "python_blocks": blocks,
        "blocks_parse": parsed / blocks if blocks else 1.0,
        "identifiers_resolve": resolved / len(rows) if rows else 0.0,
        "unresolved": sorted(set(unresolved)),
    }


def measure(project: Path, repo: str, chunks_limit: int) -> dict[str, Any]:
    """The figures of one run's tables."""
    store = TableStore(load_settings(project / "cicdllm.yaml").tables_dir)

    def rows(asset: str) -> list[dict[str, Any]]:
        table: pa.Table | None = store.read(asset, repo)
        if table is None:
            raise SystemExit(f"{project}: no {asset} table for {repo}")
        return table.to_pylist()

    questions, answers, pairs, chunk_rows = (rows(a) for a in ("questions", "answers", "qa_pairs", "code_chunks"))
    chunks = {str(r["chunk_key"]): Chunk.from_row(cast(CodeChunkRow, r)) for r in chunk_rows}
    index = repo_symbol_index(
        [str(r.get("symbol") or "") for r in chunk_rows] + [str(r["path"]) for r in chunk_rows],
        [str(r["text"]) for r in chunk_rows],
    )
    texts = [str(q["question"]) for q in questions]
    accepted = [p for p in pairs if p["accepted"]]
    reasons: dict[str, int] = {}
    for p in pairs:
        if not p["accepted"]:
            reasons[str(p["reject_reason"])] = reasons.get(str(p["reject_reason"]), 0) + 1
    return {
        "question_items": chunks_limit * len(THEMES),
        "question_items_parsed": len({q["generation_key"] for q in questions}),
        "questions": len(texts),
        "question_texts": texts,
        "distinct_2": distinct_n(texts, 2),
        "distinct_3": distinct_n(texts, 3),
        "raw": _answer_figures(answers, chunks, index),
        "dataset": _answer_figures(accepted, chunks, index),
        "rejections": dict(sorted(reasons.items())),
        "with_repo_context": sum(1 for a in answers if len(a.get("context_files") or []) > 1),
        "chunks": sorted({f"{q['path']}:{q['start_line']}" for q in questions}),
    }


def _print(name: str, figures: dict[str, Any], seconds: float) -> None:
    print(
        f"{name}: {figures['question_items_parsed']}/{figures['question_items']} question items parsed, "
        f"{figures['questions']} questions, distinct-2 {figures['distinct_2']:.3f}, "
        f"distinct-3 {figures['distinct_3']:.3f} ({seconds:.0f} s)"
    )
    for part in ("raw", "dataset"):
        f = figures[part]
        print(
            f"  {part:7s}: {f['answers']:3d} answers, {f['python_blocks']:3d} Python blocks, "
            f"parse {f['blocks_parse']:.0%}, identifiers resolve {f['identifiers_resolve']:.0%}"
            + (f" (unresolved: {', '.join(f['unresolved'][:12])})" if f["unresolved"] else "")
        )
    print(f"  rejections: {figures['rejections']}; answers with repo context: {figures['with_repo_context']}")
    print(f"  chunks asked about: {', '.join(figures['chunks'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=8, help="chunks per run (the demo's bound)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    models = embedded_model_dir(load_settings(ROOT / "cicdllm.yaml").models_dir)
    if not models.is_dir():
        print(f"error: the embedded model is not prepared ({models}); run `cicdllm model prepare`")
        return 2
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    print(f"repository: {ROOT} at {commit[:12]} (both runs), {args.chunks} chunks")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="quality-bench-") as tmp:
        shipped_tokens = load_settings(ROOT / "cicdllm.yaml").config.generation.repo_context_tokens
        for name, prompts, context_tokens in (
            ("old", BASELINE_PROMPTS, 0),
            ("new", ROOT / "prompts", shipped_tokens),
        ):
            project = Path(tmp) / name
            project.mkdir()
            _write_project(project, prompts, args.chunks, context_tokens, models, commit)
            repo, seconds = _run(project)
            results[name] = measure(project, repo, args.chunks)
            _print(name, results[name], seconds)
        _enable_judge(project)  # the new run's project
        _, seconds = _run(project)
        results["judge"] = judge = judge_figures(project, repo)
    old, new = results["old"], results["new"]
    size = min(old["questions"], new["questions"])
    matched = {name: distinct_2_at_size(results[name]["question_texts"], size) for name in ("old", "new")}
    ratio = matched["new"] / matched["old"] if matched["old"] else float("inf")
    whole = new["distinct_2"] / old["distinct_2"] if old["distinct_2"] else float("inf")
    print(
        f"distinct-2 at equal size ({size} questions, mean of {DRAWS} draws from the larger run):"
        f" old {matched['old']:.3f}, new {matched['new']:.3f} = {ratio:.2f}x (whole sets: {whole:.2f}x)"
    )
    share = "n/a" if judge["share_ge_3"] is None else f"{judge['share_ge_3']:.0%}"
    print(
        f"judge (the embedded model judging itself): {judge['scored']} of {judge['pairs']} accepted pairs scored,"
        f" {share} of those score >= 3 on correctness, groundedness and usefulness ({seconds:.0f} s)"
    )
    checks = {
        f"dataset code blocks parse >= {TARGET_PARSE:.0%}": new["dataset"]["blocks_parse"] >= TARGET_PARSE,
        f"dataset identifiers resolve >= {TARGET_RESOLVE:.0%}": new["dataset"]["identifiers_resolve"] >= TARGET_RESOLVE,
        f"distinct-2 of questions at equal size new/old = {ratio:.2f} >= {TARGET_DISTINCT2_RATIO}": ratio
        >= TARGET_DISTINCT2_RATIO,
        "question items parsed new >= old": new["question_items_parsed"] >= old["question_items_parsed"],
        "new dataset not empty": new["dataset"]["answers"] > 0,
    }
    for label, ok in checks.items():
        print(f"{'ok    ' if ok else 'MISSED'} {label}")
    if args.json:
        print(
            json.dumps(
                {"results": results, "distinct_2_ratio": ratio, "distinct_2_matched": matched, "checks": checks},
                indent=2,
            )
        )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
