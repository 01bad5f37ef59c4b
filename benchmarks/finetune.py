"""Fine-tuning benchmark: training tokens/s of mlx-lm's own ``mlx_lm.lora`` vs the ``adapter`` asset.

    .venv/bin/python -m benchmarks.finetune                   # 2 rounds of 16 steps, embedded SmolLM2-135M
    .venv/bin/python -m benchmarks.finetune --rounds 1        # quicker

Both sides train the same LoRA (same model, data, seed and settings) on a fixed mlx chat
export of questions about this repository's own modules:

1. ``mlx_lm.lora --train`` (mlx-lm's command, through ``cicdllm_assets.llm.mlx_cli``
   so it gets OpenBLAS like the asset; plain ``mlx_lm.lora`` would run on the reference BLAS);
   its report lines are timestamped as they arrive (unbuffered stdout).
2. ``cicdllm finetune`` (the asset, through Dagster); its report times come from ``training.json``.

Rounds run in ABBA order (mlx-lm, asset, asset, mlx-lm, ...) so a machine load that drifts
during the benchmark weighs on both sides alike; tokens and seconds are summed over rounds.
Throughput is measured over wall time between the reports of step 3 and step ``iters - 1``, so
model loading, compilation (steps 1-2) and the validation passes mlx-lm runs before steps 1 and
``iters`` are outside the window on both sides, while anything the asset adds per step is inside.
Same seed and data mean the same batches: the benchmark checks that both sides report the same
train losses, then uses the asset's exact token counts for both. Exits 1 when the asset's
tokens/s is below ``--target`` x mlx-lm's (default 0.95), or when the losses differ.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.finetune_helpers import REPO_ROOT, write_repo_export

EMBEDDED = REPO_ROOT / ".cicdllm" / "models" / "smollm2-135m-instruct"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
REPORT = re.compile(r"^\s*(\d+)\s+(\d+\.\d+)\s+[▼▲]")


def _run_cli(args: argparse.Namespace, data: Path, out: Path) -> dict[int, tuple[float, float]]:
    """mlx_lm.lora on ``data``: {step: (arrival time, train loss)} of its report lines."""
    out.mkdir(parents=True, exist_ok=True)
    config = out / "lora.json"
    config.write_text(json.dumps({"lora_parameters": {"rank": args.rank, "dropout": 0.0, "scale": 20.0}}))
    command = [
        sys.executable,
        "-m",
        "cicdllm_assets.llm.mlx_cli",
        "lora",
        "--model",
        str(args.model),
        "--train",
        "--data",
        str(data),
        "--iters",
        str(args.iters),
        "--batch-size",
        str(args.batch_size),
        "--num-layers",
        str(args.num_layers),
        "--learning-rate",
        str(args.learning_rate),
        "--steps-per-report",
        "1",
        "--steps-per-eval",
        "1000000",
        "--val-batches",
        "1",
        "--save-every",
        "1000000",
        "--seed",
        "0",
        "--mask-prompt",
        "--max-seq-length",
        "2048",
        "--adapter-path",
        str(out / "cli_adapter"),
        "-c",
        str(config),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO_ROOT)}
    reports: dict[int, tuple[float, float]] = {}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout or ():
            now = time.time()
            match = REPORT.match(ANSI.sub("", line))
            if match:
                reports[int(match.group(1))] = (now, float(match.group(2)))
    if proc.returncode != 0:
        raise SystemExit(f"mlx_lm.lora failed with exit code {proc.returncode}")
    return reports


def _run_asset(args: argparse.Namespace, export: Path, project: Path) -> dict[str, object]:
    """``cicdllm finetune`` in a fresh project on ``export``; the adapter's training.json."""
    (project / "cicdllm.yaml").write_text(
        json.dumps(
            {
                "storage": {"data_dir": "data", "dagster_home": "dagster_home"},
                "export": {"out_dir": str(export)},
                "llm": {"model": str(args.model)},
                "finetune": {
                    "iters": args.iters,
                    "batch_size": args.batch_size,
                    "num_layers": args.num_layers,
                    "learning_rate": args.learning_rate,
                    "rank": args.rank,
                    "report_every": 1,
                    "checkpoint_every": args.iters,
                    "eval_every": 1000000,
                    "val_batches": 1,
                },
            }
        )
    )
    env = {**os.environ, "CICDLLM_CONFIG": str(project / "cicdllm.yaml"), "DAGSTER_HOME": str(project / "dagster_home")}
    (project / "dagster_home").mkdir(exist_ok=True)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "cicdllm"), "finetune", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"cicdllm finetune failed ({done.returncode}):\n{done.stderr[-3000:]}")
    adapter = Path(json.loads(done.stdout)["adapter"]["adapter_path"])
    state: dict[str, object] = json.loads((adapter / "training.json").read_text())
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=EMBEDDED, help="mlx model directory (default: embedded)")
    parser.add_argument("--iters", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (mlx-lm, asset), in ABBA order")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--train-examples", type=int, default=48)
    parser.add_argument("--target", type=float, default=0.95)
    args = parser.parse_args()
    if args.iters < 6:
        parser.error("--iters must be at least 6 (the window is steps 3 .. iters-1)")

    first, last = 3, args.iters - 1
    totals = {"cli": [0, 0.0], "asset": [0, 0.0]}
    drift = 0.0
    with tempfile.TemporaryDirectory(prefix="cicdllm-bench-finetune-") as tmp:
        root = Path(tmp)
        export = root / "export"
        counts = write_repo_export(export, {"train": args.train_examples, "valid": 4, "test": 4})
        print(
            f"model {args.model}, data {counts}, {args.iters} steps, batch {args.batch_size}, "
            f"{args.num_layers} LoRA layers, rank {args.rank}, {args.rounds} round(s)",
            flush=True,
        )
        order = [side for i in range(args.rounds) for side in (("cli", "asset") if i % 2 == 0 else ("asset", "cli"))]
        cli_runs: list[dict[int, tuple[float, float]]] = []
        states: list[dict[str, object]] = []
        for n, side in enumerate(order):
            if side == "cli":
                cli_runs.append(_run_cli(args, export / "mlx_chat", root / f"cli{n}"))
            else:
                project = root / f"project{n}"
                project.mkdir()
                states.append(_run_asset(args, export, project))
            print(f"  run {n + 1}/{len(order)} ({side}) done", flush=True)
    for cli_reports, state in zip(cli_runs, states, strict=True):
        reports = {int(step): (clock, int(tokens)) for step, clock, tokens in state["reports"]}  # type: ignore[attr-defined]
        losses = {int(step): loss for step, loss in state["train_curve"]}  # type: ignore[attr-defined]
        missing = [s for s in range(1, args.iters + 1) if s not in cli_reports or s not in reports]
        if missing:
            raise SystemExit(f"missing report lines for steps {missing}")
        drift = max(drift, *(abs(cli_reports[s][1] - round(losses[s], 3)) for s in range(1, args.iters + 1)))
        window_tokens = reports[last][1] - reports[first][1]
        totals["asset"][0] += window_tokens
        totals["asset"][1] += reports[last][0] - reports[first][0]
        totals["cli"][0] += window_tokens
        totals["cli"][1] += cli_reports[last][0] - cli_reports[first][0]
    tokens = int(totals["asset"][0])
    asset_tps = totals["asset"][0] / totals["asset"][1]
    cli_tps = totals["cli"][0] / totals["cli"][1]
    ratio = asset_tps / cli_tps
    print(f"tokens trained in steps {first + 1}..{last}, summed over rounds: {tokens}")
    print(f"mlx_lm.lora (mlx-lm's command):   {cli_tps:8.1f} tokens/s")
    print(f"cicdllm finetune (adapter asset): {asset_tps:8.1f} tokens/s")
    print(f"ratio asset / mlx_lm.lora: {ratio:.3f} (target >= {args.target})")
    print(f"largest train-loss difference between the two runs: {drift:.3f} (same batches: <= 0.002)")
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    if drift > 0.002:
        print("FAIL: the two runs did not train on the same batches")
        sys.exit(1)
    if ratio < args.target:
        print("FAIL: the asset is slower than mlx-lm's own command")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
