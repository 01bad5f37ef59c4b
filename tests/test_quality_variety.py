"""Question variety by design: kinds planned per chunk, near-duplicate questions dropped, card figures.

The chain runs on a real git repo (repositories -> ... -> training_dataset) with the OpenAI
backend against a loopback server scripted to write, per question prompt, one question that
every theme of a chunk repeats (a near-duplicate), then the prompt's example questions
(one per planned kind) after the first.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from dagster import materialize
from PIL import Image
from ruamel.yaml import YAML

from benchmarks.fault_server import FaultServer, default_responder
from cicdllm_assets.export.plots import FIGURES, PLOTS_DIR
from cicdllm_assets.generation.chunks import Chunk
from cicdllm_assets.generation.kinds import EXAMPLES, QUESTION_KINDS, example_question, examples_text, plan_kinds
from cicdllm_assets.generation.questions_stage import example_names
from cicdllm_assets.quality.variety import distinct_n
from tests.export_fixtures import CHECKS
from tests.generation_support import SAMPLE_FILES, chain_assets, chain_project, chain_resources, read_table
from tests.llm_fixtures import tiny_model_dir  # noqa: F401 - session fixture
from tests.test_repos_git import MIT

THEMES = ["code_explanation", "testing", "debugging"]
_FILE = re.compile(r"^\s*File:\s*(\S+)", re.MULTILINE)
_EXAMPLE = re.compile(r"^\s*\d+\.\s+(.+[?.])\s*$", re.MULTILINE)  # a question or a request


def _matches(template: str, line: str) -> bool:
    """Whether ``line`` is ``template`` with its slots filled by names."""
    pattern = re.escape(template)
    for slot in ("s", "p", "c", "e"):
        pattern = pattern.replace(re.escape("{" + slot + "}"), r"[\w.]+")
    return re.fullmatch(pattern, line) is not None


def scripted(body: dict[str, Any]) -> str:
    """Question prompts: a shared near-duplicate question, then the example questions after the first."""
    messages = body["messages"]
    last = messages[-1]["content"]
    if "numbered list" not in last:
        return default_responder(body)
    path = _FILE.search(messages[1]["content"]).group(1)  # type: ignore[union-attr]
    examples = _EXAMPLE.findall(last)
    shared = f"What does the code in {path} return when it is called?"
    return json.dumps([shared, *(f"About {path}: {example}" for example in examples[1:])])


def _set_generation(project: Path) -> None:
    config = project / "cicdllm.yaml"
    yaml = YAML(typ="safe")
    data = yaml.load(config.read_text(encoding="utf-8"))
    data["generation"].update({"themes": THEMES, "questions_per_chunk": 2})
    with config.open("w", encoding="utf-8") as handle:
        yaml.dump(data, handle)


@pytest.mark.slow
def test_kinds_planned_per_chunk_and_near_duplicates_dropped(
    project: Path,
    make_git_repo,
    tiny_model_dir: Path,  # noqa: F811
) -> None:
    repo = make_git_repo("variety", {**SAMPLE_FILES, "LICENSE": MIT})
    with FaultServer(capacity=4, responder=scripted) as server:
        settings, key, instance = chain_project(project, repo.path, server.base_url, tiny_model_dir, 512)
        _set_generation(project)
        resources = chain_resources()
        assets = chain_assets()
        assert materialize(assets[:-1], partition_key=key, instance=instance, resources=resources).success
        result = materialize([*assets, *CHECKS], selection=[assets[-1]], instance=instance, resources=resources)
        assert result.success
        question_prompts = [
            r.body["messages"][-1]["content"]
            for r in server.chat_records
            if "numbered list" in r.body["messages"][-1]["content"]
        ]  # type: ignore[index]
        answer_requests = sum(
            1 for r in server.chat_records if "numbered list" not in r.body["messages"][-1]["content"]
        )  # type: ignore[index]

    chunks = read_table(settings, "code_chunks", key).to_pylist()
    questions = read_table(settings, "questions", key).to_pylist()
    n_chunks = len(chunks)
    assert n_chunks == 3 and len(question_prompts) == n_chunks * len(THEMES)
    # each prompt shows two example questions; across the chunk's three themes the six kinds appear once
    assert all(len(_EXAMPLE.findall(prompt)) == 2 for prompt in question_prompts)
    kind_of: dict[str, str] = {}
    for chunk in chunks:
        plan = plan_kinds(chunk["text"], THEMES, 2)
        kinds = [kind for theme in THEMES for kind in plan[theme]]
        assert sorted(kinds) == sorted(QUESTION_KINDS)
        names = example_names(Chunk.from_row(chunk))
        for theme in THEMES:
            expected = examples_text(plan[theme], chunk["text"], names)
            assert any(expected in prompt for prompt in question_prompts), expected
            for line, kind in zip(_EXAMPLE.findall(expected), plan[theme], strict=True):
                assert any(_matches(template, line) for template in EXAMPLES[kind]), (kind, line)
                kind_of[f"About {chunk['path']}: {line}"] = kind
    # the shared question survives once per chunk (2 near-duplicates dropped), the kind questions all do
    per_chunk: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in questions:
        per_chunk[row["chunk_key"]].append(row)
    for rows in per_chunk.values():
        assert len(rows) == 1 + len(THEMES)
        assert sum("return when it is called" in r["question"] for r in rows) == 1
        kinds = [r["kind"] for r in rows]
        assert len(set(kinds)) == len(kinds)  # no repeated kind within a chunk
        for row in rows:  # the recorded kind is the one the prompt asked for at that position
            if row["question"].startswith("About "):
                assert kind_of[row["question"]] == row["kind"]
    assert answer_requests == len(questions) == n_chunks * (1 + len(THEMES))

    card = (settings.export_dir / "README.md").read_text(encoding="utf-8")
    assert "## Question variety" in card
    exported = [r["question"] for r in read_table(settings, "qa_pairs", key).to_pylist() if r["accepted"]]
    assert f"distinct-2 = {distinct_n(exported, 2):.3f}" in card
    assert f"distinct-3 = {distinct_n(exported, 3):.3f}" in card
    assert "| question kind | pairs | share |" in card

    # plots: real PNGs next to the card, linked from it, and the same data as Dagster metadata
    meta = result.asset_materializations_for_node("training_dataset")[0].metadata
    files = meta["plot_files"].value
    assert sorted(files) == sorted(FIGURES)
    for name in FIGURES:
        path = Path(files[name])
        assert path.parent == settings.export_dir / "plots"
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] >= 300
            image.verify()
        assert f"]({PLOTS_DIR}/{name}.png)" in card
    kinds_md = meta["plot_question_kinds"].value
    exported_kinds = [r["question_kind"] for r in read_table(settings, "qa_pairs", key).to_pylist() if r["accepted"]]
    for kind in set(exported_kinds):
        assert f"| {kind} | {exported_kinds.count(kind)} |" in kinds_md
    lengths_md = meta["plot_answer_length"].value
    assert sum(int(line.rsplit("|", 2)[1]) for line in lengths_md.splitlines()[2:]) == len(exported)


def test_distinct_n_counts_repeated_ngrams() -> None:
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["What does x do?", "What does y do?"], 2) == pytest.approx(5 / 6)
    assert distinct_n(["x y z", "x y", "y z x"], 2) == pytest.approx(3 / 5)  # same words, other order
    assert distinct_n(["a b c d", "b c d a"], 3) == pytest.approx(3 / 4)
    assert distinct_n([], 3) == 0.0


def test_plan_kinds_is_deterministic_and_never_repeats_within_a_theme() -> None:
    themes = ["code_explanation", "testing", "debugging", "design_rationale", "usage_examples"]
    for key in ("a", "b", "c"):
        plan = plan_kinds(key, themes, 3)
        assert plan == plan_kinds(key, themes, 3)
        assert all(len(set(kinds)) == 3 for kinds in plan.values())
        first_six = [plan[t][0] for t in themes] + [plan[themes[0]][1]]
        assert len(set(first_six)) == 6


def test_every_kind_is_as_likely_in_every_slot() -> None:
    """Over many chunks each slot's kinds spread evenly: no theme pins its first question to
    one kind (that made two kinds half of a two-theme, two-question dataset)."""
    themes = ["code_explanation", "usage_examples"]
    plans = [plan_kinds(f"chunk {i}", themes, 2) for i in range(600)]
    for theme in themes:
        for slot in range(2):
            counts = Counter(plan[theme][slot] for plan in plans)
            assert set(counts) == set(QUESTION_KINDS)
            assert max(counts.values()) < 2 * min(counts.values()), (theme, slot, counts)


def test_example_questions_use_the_chunk_names_and_skip_unfillable_phrasings() -> None:
    names = {"s": ["save"], "p": ["item"], "c": ["encode"], "e": ["StoreError"]}
    seen = set()
    for seed in map(str, range(200)):
        # every name available: the phrasings that name more than the symbol, all of them in turn
        seen.add(example_question("errors", seed, names))
        # no exception raised, no parameter, no callee: only the phrasing that needs none
        only_symbol = example_question("errors", seed, {"s": ["save"], "p": [], "c": [], "e": []})
        assert only_symbol == "Which inputs make `save` fail?"
    assert seen == {
        "When does `save` raise `StoreError`?",
        "What happens when `item` is empty or invalid in `save`?",
        "What goes wrong in `save` if `encode` fails?",
        "If a caller hands `save` a `item` of the wrong type, what error comes back?",
        "How should callers of `save` handle `StoreError`?",
        "Does `save` protect itself against a missing `item`?",
        "Where could an exception escape from `save` when `encode` misbehaves?",
        "Can `save` leave things half-done when `encode` throws midway?",
        "Under which conditions is `StoreError` propagated out of `save`?",
        "Is a `None` or zero `item` rejected by `save`, or silently accepted?",
        "Which failure of `encode` would surprise a user of `save` most?",
    }
    # with only a parameter besides the symbol, the phrasings that need the others are skipped
    with_param = {example_question("errors", s, {"s": ["save"], "p": ["item"], "c": [], "e": []}) for s in "abcdefghij"}
    assert (
        with_param
        <= {
            "What happens when `item` is empty or invalid in `save`?",
            "If a caller hands `save` a `item` of the wrong type, what error comes back?",
            "Does `save` protect itself against a missing `item`?",
            "Is a `None` or zero `item` rejected by `save`, or silently accepted?",
        }
        and len(with_param) >= 2
    )
    text = examples_text(["usage", "relations"], "seed", names)
    assert [line[:3] for line in text.splitlines()] == ["1. ", "2. "]
    assert text == examples_text(["usage", "relations"], "seed", names)  # deterministic


def test_card_variety_counts_every_kind_but_samples_distinct_n(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kind mix covers every exported pair; distinct-n and answer lengths only the first
    VARIETY_SAMPLE pairs by id, so the card's memory does not grow with the dataset."""
    import duckdb

    from cicdllm_assets.export import quality_report

    monkeypatch.setattr(quality_report, "VARIETY_SAMPLE", 2)
    con = duckdb.connect()
    con.execute("CREATE TABLE ordered (idx BIGINT, question VARCHAR, question_kind VARCHAR, answer VARCHAR)")
    con.execute(
        "INSERT INTO ordered VALUES (2, 'how does x work', 'usage', 'a b c'), (0, 'why is y so', 'design', 'a'),"
        " (1, 'why is y so', NULL, 'a b'), (3, 'what errors does z raise', '', 'a b c d')"
    )
    variety, words = quality_report.exported_variety(con, "ordered")
    assert variety.questions == 4
    assert variety.kinds == {"design": 1, "unknown": 2, "usage": 1}
    assert words == [1, 2]  # the first two pairs by idx only
    assert variety.distinct_2 == 0.5  # 'why is y so' twice: 3 distinct bigrams of 6
