"""benchmarks/incremental.py on a tiny real git history: a and b per commit, totals, exit code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.incremental import Hunk, Replayer, changed_lines, main, replay, replay_commits, totals
from cicdllm_assets.config.models import ProcessingConfig
from cicdllm_assets.generation.prompts import SHIPPED_PROMPTS_DIR
from tests.conftest import GitRepo
from tests.discovery_helpers import train_tokenizer

BUDGET = 64


def _function(i: int) -> str:
    return f"def step_{i}(value):\n    total = value * {i} + {i * 3}\n    return total - {i}\n\n\n"


@pytest.fixture
def history(make_git_repo, tmp_path: Path) -> tuple[GitRepo, Path]:
    functions = [_function(i) for i in range(16)]
    repo = make_git_repo("tiny", {"pkg/steps.py": "".join(functions)})
    edited = list(functions)
    edited[5] = edited[5].replace("return total - 5", "return total - 500")
    repo.write("pkg/steps.py", "".join(edited))
    repo.commit("edit step_5")
    repo.write("pkg/steps.py", "\n\n\n" + "".join(edited))
    repo.commit("blank lines on top")
    edited[10] = edited[10].replace("    total = value * 10 + 30\n", "")
    repo.write("pkg/steps.py", "\n\n\n" + "".join(edited))
    repo.commit("drop a line of step_10")
    return repo, train_tokenizer(tmp_path / "tok" / "tokenizer.json")


def test_replay_counts_new_chunks_and_chunks_the_diff_touches(history, tmp_path: Path) -> None:
    repo, tokenizer = history
    commits = replay_commits(repo.path, 3)
    assert len(commits) == 4
    processing = ProcessingConfig(chunk_max_tokens=BUDGET)
    replayer = Replayer(repo.path, processing, tokenizer, tmp_path / "state.db")
    rows = [replayer.chunks(c) for c in commits]
    assert len(rows[0]) >= 6  # several chunks in the file

    results = replay(Replayer(repo.path, processing, tokenizer, tmp_path / "state2.db"), commits)
    edit, blank, drop = results
    # the edit: one chunk holds line of step_5's return, it alone is new
    holding = [r for r in rows[1] if r.start_line <= 28 <= r.end_line]
    assert changed_lines(repo.path, commits[0], commits[1]) == {"pkg/steps.py": [Hunk(28, 1, 28, 1)]}
    assert (edit.needing_generation, edit.touched_by_diff) == (1, 1) and len(holding) == 1
    assert edit.per_file == len(rows[1])  # keyed by blob, every chunk of the file would be new
    # blank lines on top: the diff touches no chunk (the first one starts below them), nothing is new
    assert changed_lines(repo.path, commits[1], commits[2]) == {"pkg/steps.py": [Hunk(0, 0, 1, 3)]}
    assert (blank.needing_generation, blank.touched_by_diff) == (0, 0)
    assert [(r.start_line - 3, r.end_line - 3) for r in rows[2]] == [(r.start_line, r.end_line) for r in rows[1]]
    # each function is its own chunk (a definition of >= budget/4 tokens shares none)
    assert [(r.start_line, r.end_line) for r in rows[2]] == [(4 + 5 * i, 6 + 5 * i) for i in range(16)]
    # a deletion (old line 55 of step_10): the chunk that held it lost a line; what is left
    # of it is new and touched by the diff, the chunks after it only moved up a line
    assert changed_lines(repo.path, commits[2], commits[3]) == {"pkg/steps.py": [Hunk(55, 1, 54, 0)]}
    assert [(r.start_line, r.end_line) for r in rows[3]][9:] == [
        (49, 51),
        (54, 55),
        *((r.start_line - 1, r.end_line - 1) for r in rows[2][11:]),
    ]
    assert (drop.needing_generation, drop.touched_by_diff) == (1, 1)
    summary = totals(results)
    assert (summary["needing_generation"], summary["touched_by_diff"], summary["ratio"], summary["ok"]) == (
        2,
        2,
        1.0,
        True,
    )


def test_exit_code_follows_the_target(history, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    repo, tokenizer = history
    args = [str(repo.path), "--commits", "3", "--budget", str(BUDGET), "--tokenizer", str(tokenizer)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "a=1    b=1    a/b=1.00" in out and "edit step_5" in out and "ratio: 1.0" in out
    # templates that show line numbers make every chunk below an insertion new: a miss
    prompts = tmp_path / "prompts"
    shutil.copytree(SHIPPED_PROMPTS_DIR, prompts)
    defaults = prompts / "_defaults.yaml"
    defaults.write_text(
        defaults.read_text(encoding="utf-8").replace(
            "File: {path} ({language})", "File: {path} (lines {start_line}-{end_line}, {language})"
        ),
        encoding="utf-8",
    )
    assert main([*args, "--prompts", str(prompts)]) == 1
    out = capsys.readouterr().out
    assert "a=16   b=0" in out and "ratio: 11.5" in out and "ok: False" in out
