"""mlx-lm's own command line (``mlx_lm <subcommand> ...``) with OpenBLAS loaded first (Linux).

    .venv/bin/python -m cicdllm_assets.llm.mlx_cli generate --model M --adapter-path A -p "hi"
    .venv/bin/python -m cicdllm_assets.llm.mlx_cli lora --model M --train --data D

Takes exactly the arguments of ``mlx_lm``'s CLI; plain ``mlx_lm.<subcommand>`` works too,
but on Linux its matmuls then run on the bundled reference BLAS (tens of times slower).
"""

from __future__ import annotations

from cicdllm_assets.llm.openblas import ensure_openblas


def main() -> None:
    """Load OpenBLAS, then hand over to ``mlx_lm``'s subcommand dispatcher."""
    ensure_openblas()
    from mlx_lm.cli import main as mlx_lm_main

    mlx_lm_main()


if __name__ == "__main__":
    main()
