"""benchmarks/discovery.py runs end to end on a small repo (figures are not asserted)."""

from __future__ import annotations

import json

from benchmarks import discovery as bench
from tests.discovery_helpers import train_tokenizer


def test_benchmark_runs_and_reports(make_git_repo, tmp_path, capsys, project) -> None:
    files = {f"pkg/m{i}.py": f"def f{i}(x):\n    return x + {i}\n" * 20 for i in range(10)}
    repo = make_git_repo("bench", files)
    tok = train_tokenizer(tmp_path / "tok" / "tokenizer.json")
    code = bench.main([str(repo.path), "--tokenizer", str(tok), "--repeat", "1", "--json", "--budget", "64"])
    report = json.loads(capsys.readouterr().out)
    assert code in (0, 1)
    assert report["files_kept"] == 10 and report["chunks"] >= 10
    assert report["warm_tokenizer_calls"] == 0 and report["warm_cache_hits"] == 10
    for key in ("cold_ratio", "warm_ratio", "cold_files_per_s", "cold_mb_per_s", "bare_encode_s"):
        assert report[key] > 0
