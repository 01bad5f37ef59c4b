"""Subprocess entry point for the judge SIGKILL-and-resume test.

``python -m tests.judge_worker <repo>`` materializes ``qa_pairs`` (and so the judge) for one
partition with the project's config ($CICDLLM_CONFIG, $DAGSTER_HOME), like a run process.
"""

from __future__ import annotations

import sys

from dagster import DagsterInstance

from tests.judge_support import run_qa_pairs


def main(argv: list[str]) -> int:
    """Run and return 0 on success."""
    result = run_qa_pairs(argv[0], DagsterInstance.get(), raise_on_error=False)
    return 0 if result.success else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
