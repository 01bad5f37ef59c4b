"""Replay a repository's history through discovery and chunking: how much must be generated again?

    python benchmarks/incremental.py REPO [--commits 40] [--budget 512] [--tokenizer tokenizer.json]

Takes the last N commits of REPO's first-parent history (plus the commit before them as the
starting point) and runs the real source_files and code_chunks work on each, in order, with
one plan/verdict/redaction cache as the assets keep it. Per replayed commit it prints

- ``a``: chunks needing generation: chunks whose generation input (the values the prompt
  templates show of a chunk, hashed as the generation ledger's item keys hash them; the
  shipped templates, or ``--prompts DIR``) was not seen in any earlier commit of the replay;
- ``b``: chunks of the new commit that overlap a line changed by ``git diff -U0 --no-renames``
  (an added or changed line; for a deletion, a line next to it that shared an old chunk
  with a deleted line): chunks that must change;
- ``per_file``: chunks of the files whose content changed (what keying chunks by blob
  regenerates);

and the totals. ``a >= b`` up to chunks that return to an earlier content; a/b above 1 is
work done for chunks the diff did not touch. Target: total a/b <= 1.10 (exit 1 on a miss).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.discovery import find_tokenizer
from cicdllm_assets.chunking.build import build_chunks, kept_in_chunk_order
from cicdllm_assets.chunking.cache import PlanCache
from cicdllm_assets.chunking.redaction_cache import RedactionCache
from cicdllm_assets.chunking.rows import ChunkRowBuilder
from cicdllm_assets.chunking.service import Chunker
from cicdllm_assets.config.models import GenerationConfig, ProcessingConfig
from cicdllm_assets.discovery.discover import Discovery
from cicdllm_assets.discovery.table import source_files_table
from cicdllm_assets.discovery.verdicts import VerdictCache
from cicdllm_assets.generation.chunks import Chunk
from cicdllm_assets.generation.prompts import SHIPPED_PROMPTS_DIR, PromptManager
from cicdllm_assets.llm.tokenizer_counter import TokenCounter
from cicdllm_assets.quality.secrets import redact_secrets
from cicdllm_assets.storage.contract import CodeChunkRow
from cicdllm_assets.storage.state import StateStore

TARGET = 1.10
_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@", re.MULTILINE)


@dataclass(frozen=True)
class ChunkRow:
    """What the replay needs of one code_chunks row (``key``: its generation input)."""

    key: str
    path: str
    blob_sha: str
    start_line: int
    end_line: int


@dataclass
class CommitResult:
    """The figures of one replayed commit."""

    commit: str
    subject: str
    files_changed: int
    chunks: int
    needing_generation: int  # a
    touched_by_diff: int  # b
    per_file: int

    @property
    def ratio(self) -> float | None:
        """a/b (None when the diff touched no chunk)."""
        return self.needing_generation / self.touched_by_diff if self.touched_by_diff else None


def git(repo: Path, *args: str) -> str:
    """stdout of one git command in ``repo``."""
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def replay_commits(repo: Path, count: int, head: str = "HEAD") -> list[str]:
    """The starting commit and then the last ``count`` first-parent commits, oldest first."""
    shas = git(repo, "rev-list", "--first-parent", f"--max-count={count + 1}", head).split()
    if len(shas) < 2:
        raise SystemExit(f"{repo}: needs at least 2 commits on {head}, found {len(shas)}")
    return shas[::-1]


@dataclass(frozen=True)
class Hunk:
    """One ``git diff -U0`` hunk: lines ``old_start``.. (``old_count``) became ``new_start``.. (``new_count``)."""

    old_start: int
    old_count: int
    new_start: int
    new_count: int


def changed_lines(repo: Path, old: str, new: str) -> dict[str, list[Hunk]]:
    """The hunks of ``git diff -U0 --no-renames old new``, per path of ``new``."""
    out: dict[str, list[Hunk]] = {}
    diff = git(repo, "diff", "-U0", "--no-renames", "--no-color", "--no-ext-diff", old, new)
    path: str | None = None
    for line in diff.splitlines():
        if line.startswith("+++ "):
            path = None if line == "+++ /dev/null" else line[6:] if line.startswith("+++ b/") else line[4:]
            continue
        match = _HUNK_RE.match(line)
        if match is None or path is None:
            continue
        a, k, n, m = (int(g) if g is not None else 1 for g in match.groups())
        out.setdefault(path, []).append(Hunk(a, k, n, m))
    return out


def _holds(row: ChunkRow, line: int) -> bool:
    return row.start_line <= line <= row.end_line


def touched(rows: Iterable[ChunkRow], hunks: dict[str, list[Hunk]], old_rows: Iterable[ChunkRow] = ()) -> int:
    """Chunks of the new commit that the diff touches.

    A chunk is touched when it holds an added or changed line, or, for lines only deleted,
    when it holds a line next to the deletion that sat in the same old chunk as a deleted line
    (the surviving part of a chunk that lost lines).
    """
    old_by_path: dict[str, list[ChunkRow]] = {}
    for row in old_rows:
        old_by_path.setdefault(row.path, []).append(row)
    count = 0
    for row in rows:
        for hunk in hunks.get(row.path, ()):
            if hunk.new_count:
                if row.start_line <= hunk.new_start + hunk.new_count - 1 and row.end_line >= hunk.new_start:
                    break
                continue
            first, last = hunk.old_start, hunk.old_start + hunk.old_count - 1  # deleted old lines
            lost = [o for o in old_by_path.get(row.path, ()) if o.start_line <= last and o.end_line >= first]
            before = _holds(row, hunk.new_start) and any(_holds(o, first - 1) for o in lost)
            after = _holds(row, hunk.new_start + 1) and any(_holds(o, last + 1) for o in lost)
            if before or after:
                break
        else:
            continue
        count += 1
    return count


class Replayer:
    """Discovery + chunking of successive commits of one repo, with the assets' caches."""

    def __init__(
        self,
        repo: Path,
        processing: ProcessingConfig,
        tokenizer: Path,
        state_db: Path,
        redact: bool = True,
        prompts_dir: Path = SHIPPED_PROMPTS_DIR,
    ) -> None:
        self.repo, self.processing, self.redact = repo, processing, redact
        manager = PromptManager(prompts_dir)
        self.themes = [manager.theme(name) for name in GenerationConfig().themes]
        self.counter = TokenCounter(tokenizer)
        self.state = StateStore(state_db)
        self.cache = PlanCache(self.state, lru_size=4096)
        self.verdicts = VerdictCache(self.state, processing.skip_generated)
        self.redactions = RedactionCache(self.state) if redact else None

    def chunks(self, commit: str) -> list[ChunkRow]:
        """The code_chunks rows of ``commit`` (source_files work, then code_chunks work)."""
        chunker = Chunker(self.counter, self.processing.chunk_max_tokens, self.cache)
        try:
            files = Discovery(self.repo, commit, self.processing, chunker, verdicts=self.verdicts).run()
            table = source_files_table("replay", commit, files)
            builder = ChunkRowBuilder(
                "replay",
                commit,
                None,
                chunker.budget,
                self.counter,
                redact_secrets if self.redact else None,
                redaction_cache=self.redactions,
            )
            build_chunks(self.repo, kept_in_chunk_order(table.to_pylist()), chunker, builder)
            rows = builder.table().to_pylist()
        finally:
            chunker.close()
        return [
            ChunkRow(self.generation_input(r), r["path"], r["blob_sha"], r["start_line"], r["end_line"]) for r in rows
        ]

    def generation_input(self, row: dict[str, Any]) -> str:
        """What the ledger keys of a chunk's items depend on besides templates, model and params."""
        chunk = Chunk.from_row(cast(CodeChunkRow, row))
        return "|".join(theme.chunk_input(chunk, kind) for theme in self.themes for kind in ("question", "answer"))


def replay(replayer: Replayer, commits: Sequence[str], log: Any = None) -> list[CommitResult]:
    """Replay ``commits`` (the first is the starting point, not counted)."""
    repo = replayer.repo
    seen: set[str] = set()
    previous = replayer.chunks(commits[0])
    seen.update(row.key for row in previous)
    results: list[CommitResult] = []
    for old, new in pairwise(commits):
        rows = replayer.chunks(new)
        changes = changed_lines(repo, old, new)
        old_blobs = {(row.path, row.blob_sha) for row in previous}
        fresh = {row.key for row in rows} - seen
        result = CommitResult(
            commit=new[:10],
            subject=git(repo, "log", "-1", "--format=%s", new).strip()[:60],
            files_changed=len(changes),
            chunks=len(rows),
            needing_generation=len(fresh),
            touched_by_diff=touched(rows, changes, previous),
            per_file=sum(1 for row in rows if (row.path, row.blob_sha) not in old_blobs),
        )
        results.append(result)
        if log is not None:
            log(result)
        seen.update(row.key for row in rows)
        previous = rows
    return results


def totals(results: Sequence[CommitResult]) -> dict[str, Any]:
    """Sums over the replay and the a/b ratio."""
    a = sum(r.needing_generation for r in results)
    b = sum(r.touched_by_diff for r in results)
    per_file = sum(r.per_file for r in results)
    return {
        "commits": len(results),
        "needing_generation": a,
        "touched_by_diff": b,
        "per_file": per_file,
        "ratio": round(a / b, 3) if b else None,
        "per_file_ratio": round(per_file / b, 3) if b else None,
        "target": TARGET,
        "ok": bool(b) and a / b <= TARGET,
    }


def _line(result: CommitResult) -> str:
    ratio = f"{result.ratio:.2f}" if result.ratio is not None else "-"
    return (
        f"{result.commit}  a={result.needing_generation:<4} b={result.touched_by_diff:<4} a/b={ratio:<5}"
        f" per_file={result.per_file:<4} chunks={result.chunks:<5} files={result.files_changed:<3} {result.subject}"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", type=Path, help="a git repository")
    parser.add_argument("--commits", type=int, default=40, help="how many of the last commits to replay")
    parser.add_argument("--head", default="HEAD", help="replay the history ending at this commit")
    parser.add_argument("--budget", type=int, default=None, help="chunk_max_tokens (default: 512)")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: the configured/embedded model's)")
    parser.add_argument(
        "--prompts",
        type=Path,
        default=SHIPPED_PROMPTS_DIR,
        help="prompt templates whose inputs define a new chunk (default: the shipped ones)",
    )
    parser.add_argument("--no-redact", action="store_true", help="skip secret redaction (the assets always redact)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.commits < 1:
        parser.error("--commits must be at least 1")

    processing = ProcessingConfig()
    if args.budget:
        processing = processing.model_copy(update={"chunk_max_tokens": args.budget})
    repo = args.repo.resolve()
    commits = replay_commits(repo, args.commits, args.head)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = find_tokenizer(args.tokenizer)
        db = Path(tmp) / "state.db"
        replayer = Replayer(repo, processing, tokenizer, db, redact=not args.no_redact, prompts_dir=args.prompts)
        results = replay(replayer, commits, None if args.json else lambda r: print(_line(r), flush=True))
    summary = {
        "repo": str(repo),
        "budget": processing.chunk_max_tokens,
        **totals(results),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        sys.stdout.write(json.dumps({"commits": [asdict(r) for r in results], "total": summary}, indent=2) + "\n")
    else:
        for key, value in summary.items():
            sys.stdout.write(f"{key:>18}: {value}\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
