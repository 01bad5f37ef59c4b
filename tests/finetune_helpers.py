"""A small, fixed mlx chat export built from this repository's own source, for fine-tuning tests.

Questions ask which module of cicdllm defines a function or class; answers name the file.
Splits are by file (as the real export's are), so test questions are about files the
adapter never saw: what it can learn there is the answer's form and the package layout.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SYSTEM = "You are an expert software engineer who answers questions about code."


def _definitions(package: str, per_file: int) -> list[tuple[str, str]]:
    """Up to ``per_file`` public top-level functions/classes of each public module."""
    found: list[tuple[str, str]] = []
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        if path.name.startswith("_"):
            continue
        rel = path.relative_to(REPO_ROOT).as_posix()
        names = [
            node.name
            for node in ast.parse(path.read_text(encoding="utf-8")).body
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_")
        ]
        found += [(rel, name) for name in names[:per_file]]
    return found


def record(rel: str, name: str) -> dict[str, object]:
    """One chat example."""
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"In the cicdllm repository, which file defines `{name}`?"},
            {"role": "assistant", "content": f"`{name}` is defined in `{rel}`."},
        ]
    }


def write_repo_export(
    export_dir: Path, per_split: dict[str, int], package: str = "cicdllm_assets", per_file: int = 2
) -> dict[str, int]:
    """Write ``<export_dir>/mlx_chat/{split}.jsonl`` with at most ``per_split[split]`` examples each.

    Files go to test / valid / train in turn (by sorted path), so no file is in two splits;
    at most ``per_file`` definitions per file, so each split spreads over many files.
    A split asked for 0 examples gets no file (as the export does for an empty split).
    """
    files: dict[str, list[str]] = {}
    for rel, name in _definitions(package, per_file):
        files.setdefault(rel, []).append(name)
    order = ("test", "valid", "train", "train", "train")
    rows: dict[str, list[dict[str, object]]] = {split: [] for split in per_split}
    for i, (rel, names) in enumerate(sorted(files.items())):
        split = order[i % len(order)]
        for name in names:
            if split in rows and len(rows[split]) < per_split[split]:
                rows[split].append(record(rel, name))
    out = export_dir / "mlx_chat"
    out.mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        path = out / f"{split}.jsonl"
        if items:
            path.write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
        else:
            path.unlink(missing_ok=True)
    return {split: len(items) for split, items in rows.items()}
