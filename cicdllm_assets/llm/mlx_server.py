"""``mlx_lm.server`` with OpenBLAS loaded first (Linux), for the openai backend on this machine.

    .venv/bin/python -m cicdllm_assets.llm.mlx_server --model .cicdllm/models/smollm2-135m-instruct

Takes exactly ``mlx_lm.server``'s arguments. Plain ``python -m mlx_lm.server`` works too,
but on Linux its matmuls then run on the bundled reference BLAS (tens of times slower).
"""

from __future__ import annotations

import sys

from cicdllm_assets.llm import mlx_cli


def main() -> None:
    """Load OpenBLAS, then hand over to mlx_lm.server's own command line."""
    sys.argv.insert(1, "server")
    mlx_cli.main()


if __name__ == "__main__":
    main()
