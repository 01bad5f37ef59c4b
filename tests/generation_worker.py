"""Subprocess entry point for the SIGKILL-and-resume test.

``python -m tests.generation_worker <repo> <asset>...`` materializes the given generation
assets for one partition with the project's config ($CICDLLM_CONFIG, $DAGSTER_HOME),
exactly like a run process would.
"""

from __future__ import annotations

import sys

from cicdllm_assets.resources.llm.openai_resource import OpenAIResource
from tests.generation_support import run_generation


def main(argv: list[str]) -> int:
    """Run and return 0 on success."""
    repo, *selection = argv
    result = run_generation(repo, OpenAIResource(), selection=selection or ["answers"], raise_on_error=False)
    return 0 if result.success else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
