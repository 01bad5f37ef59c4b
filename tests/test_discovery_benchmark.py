"""benchmarks/discovery.py: the real path (with redaction) by default, and its exit code is the
verdict on the targets (figures are not asserted: only that a miss gives a non-zero exit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import discovery as bench
from tests.discovery_helpers import train_tokenizer

AWS_KEY = "AKIA" + "Q3EGRL7VXJ2B4NZT"


@pytest.fixture
def bench_args(make_git_repo, tmp_path: Path) -> list[str]:
    files = {f"pkg/m{i}.py": f"def f{i}(x):\n    return x + {i}\n" * 20 for i in range(10)}
    files["pkg/settings.py"] = f'AWS_ACCESS_KEY_ID = "{AWS_KEY}"\n'
    repo = make_git_repo("bench", files)
    tok = train_tokenizer(tmp_path / "tok" / "tokenizer.json")
    return [str(repo.path), "--tokenizer", str(tok), "--repeat", "1", "--json", "--budget", "64"]


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = bench.main(args)
    return code, json.loads(capsys.readouterr().out)


def test_met_targets_exit_zero_and_the_real_path_is_timed(bench_args, capsys, project) -> None:
    code, report = _run([*bench_args, "--target-cold", "1000", "--target-warm", "1000"], capsys)
    assert code == 0
    assert report["cold_ok"] is True and report["warm_ok"] is True
    assert report["targets"] == {"cold_ratio": 1000.0, "warm_ratio": 1000.0}
    assert report["redaction_included"] is True and report["redactions"] == 1
    assert report["files_kept"] == 11 and report["chunks"] >= 11
    # warm: plans come from the cache; only the redacted chunk's new text is counted again
    assert report["warm_tokenizer_calls"] == 1 and report["warm_cache_hits"] == 11
    for key in ("cold_ratio", "warm_ratio", "cold_files_per_s", "bare_encode_s", "cold_s", "warm_s"):
        assert report[key] > 0


def test_a_missed_target_exits_non_zero(bench_args, capsys, project) -> None:
    code, report = _run([*bench_args, "--target-cold", "0.000001", "--target-warm", "1000"], capsys)
    assert code == 1
    assert report["cold_ok"] is False and report["warm_ok"] is True
    code, report = _run([*bench_args, "--target-cold", "1000", "--target-warm", "0.000001", "--no-redact"], capsys)
    assert code == 1
    assert report["warm_ok"] is False and report["redaction_included"] is False
