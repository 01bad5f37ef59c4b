"""LoRA training through mlx-lm's own ``mlx_lm.tuner.train``, resumable from checkpoints.

An adapter directory is content-addressed: its name is a hash of the dataset's content,
the base model and the training parameters, so the same inputs find the finished adapter
and train nothing. Inside it mlx-lm's layout (``adapter_config.json`` +
``adapters.safetensors``, so ``mlx_lm.generate --adapter-path`` and ``mlx_lm.fuse`` read it)
plus ``training.json`` (step, loss curves) and ``checkpoints/`` (adapter weights and Adam
state every ``checkpoint_every`` steps). A killed run resumes from the last checkpoint:
the step counter continues and the batches already trained on are skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cicdllm_assets.config.models import FinetuneConfig
from cicdllm_assets.finetune.data import ChatData, FinetuneInputError
from cicdllm_assets.llm.mlx_backend import load_fresh_model
from cicdllm_assets.llm.openblas import ensure_openblas

logger = logging.getLogger(__name__)

TRAINING_PARAMS: tuple[str, ...] = (
    "iters",
    "learning_rate",
    "rank",
    "scale",
    "dropout",
    "batch_size",
    "num_layers",
    "max_seq_length",
    "mask_prompt",
    "seed",
)
"""The ``finetune`` settings that change the trained weights (and so the adapter's key)."""
STATE_FILE = "training.json"
ADAPTER_FILE = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train.log"


@dataclass(frozen=True)
class TrainPlan:
    """What to train and where: the adapter's identity and directory."""

    model: str
    data: ChatData
    params: dict[str, Any]
    key: str
    adapter_dir: Path

    @property
    def iters(self) -> int:
        """Total training steps."""
        return int(self.params["iters"])


def plan_training(model: str, data: ChatData, config: FinetuneConfig, adapters_root: Path) -> TrainPlan:
    """The adapter for (dataset content, base model, training parameters)."""
    params = {name: getattr(config, name) for name in TRAINING_PARAMS}
    identity = json.dumps({"dataset": data.content_hash, "model": model, "params": params}, sort_keys=True)
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return TrainPlan(model=model, data=data, params=params, key=key, adapter_dir=Path(adapters_root) / key)


@dataclass
class TrainingState:
    """``training.json``: how far training got and what it measured."""

    step: int = 0
    done: bool = False
    checkpoint: str | None = None
    train_curve: list[list[float]] = field(default_factory=list)
    """[step, train loss] per report."""
    valid_curve: list[list[float]] = field(default_factory=list)
    """[step, valid loss] per evaluation during training."""
    trained_tokens: int = 0
    tokens_per_second: list[float] = field(default_factory=list)
    """mlx-lm's own train tokens/s of each report window."""
    reports: list[list[float]] = field(default_factory=list)
    """[step, wall clock, trained tokens so far] per report (for throughput over wall time)."""
    session_starts: list[int] = field(default_factory=list)
    """The step each training session started from (0, then the checkpoint of each resume)."""
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, adapter_dir: Path) -> TrainingState:
        """The saved state, or a fresh one."""
        path = adapter_dir / STATE_FILE
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def save(self, adapter_dir: Path) -> None:
        """Write atomically (temp file + rename)."""
        _write_atomic(adapter_dir / STATE_FILE, json.dumps(asdict(self), indent=2).encode())

    @property
    def final_train_loss(self) -> float | None:
        """Last reported train loss."""
        return self.train_curve[-1][1] if self.train_curve else None


@dataclass(frozen=True)
class TrainProgress:
    """One report: global step, total steps, train loss, tokens/s."""

    step: int
    total: int
    loss: float | None
    tokens_per_second: float | None


@dataclass(frozen=True)
class TrainResult:
    """What a call of :func:`train_adapter` did."""

    plan: TrainPlan
    state: TrainingState
    trained_steps: int
    resumed_from: int
    seconds: float

    @property
    def reused(self) -> bool:
        """True when the finished adapter already existed (nothing trained)."""
        return self.trained_steps == 0


def adapter_ready(adapter_dir: Path) -> bool:
    """True when ``adapter_dir`` holds a finished adapter."""
    return (adapter_dir / ADAPTER_FILE).is_file() and TrainingState.load(adapter_dir).done


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _save_arrays(path: Path, arrays: dict[str, Any]) -> None:
    import mlx.core as mx

    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    mx.save_safetensors(str(tmp), arrays)
    os.replace(tmp, path)


def _skip_batches(skip: int) -> Callable[..., Iterator[Any]]:
    """mlx-lm's ``iterate_batches`` with the first ``skip`` training batches dropped."""
    from mlx_lm.tuner.trainer import iterate_batches

    def iterate(*args: Any, **kwargs: Any) -> Iterator[Any]:
        batches = iterate_batches(*args, **kwargs)
        if kwargs.get("loop"):  # the training stream, not a validation pass
            for _ in range(skip):
                next(batches)
        return batches

    return iterate


class _Recorder:
    """mlx-lm ``TrainingCallback``: curves, progress and checkpoints at global steps."""

    def __init__(
        self,
        plan: TrainPlan,
        state: TrainingState,
        model: Any,
        optimizer: Any,
        offset: int,
        checkpoint_every: int,
        on_progress: Callable[[TrainProgress], None] | None,
    ) -> None:
        self.plan, self.state, self.model, self.optimizer = plan, state, model, optimizer
        self.offset, self.checkpoint_every, self.on_progress = offset, checkpoint_every, on_progress
        self.base_tokens = state.trained_tokens

    def on_train_loss_report(self, info: dict[str, Any]) -> None:
        step = self.offset + int(info["iteration"])
        loss = float(info["train_loss"])
        self.state.train_curve.append([step, loss])
        self.state.tokens_per_second.append(float(info["tokens_per_second"]))
        self.state.trained_tokens = self.base_tokens + int(info["trained_tokens"])
        self.state.reports.append([step, time.time(), self.state.trained_tokens])
        self.state.step = step
        if step % self.checkpoint_every == 0 and step < self.plan.iters:
            self.checkpoint(step)
        if self.on_progress is not None:
            self.on_progress(TrainProgress(step, self.plan.iters, loss, float(info["tokens_per_second"])))

    def on_val_loss_report(self, info: dict[str, Any]) -> None:
        self.state.valid_curve.append([self.offset + int(info["iteration"]), float(info["val_loss"])])

    def checkpoint(self, step: int) -> None:
        """Adapter weights + Adam state for ``step``, then the state file points at them."""
        from mlx.utils import tree_flatten

        folder = self.plan.adapter_dir / CHECKPOINTS
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{step:07d}"
        _save_arrays(folder / f"{name}_adapters.safetensors", dict(tree_flatten(self.model.trainable_parameters())))
        _save_arrays(folder / f"{name}_optimizer.safetensors", dict(tree_flatten(self.optimizer.state)))
        previous = self.state.checkpoint
        self.state.checkpoint = name
        self.state.save(self.plan.adapter_dir)
        if previous and previous != name:
            for suffix in ("adapters", "optimizer"):
                (folder / f"{previous}_{suffix}.safetensors").unlink(missing_ok=True)
        logger.info("checkpoint at step %d of %d", step, self.plan.iters)


def _restore_optimizer(optimizer: Any, trainable: Any, path: Path) -> None:
    """Initialise Adam's state for ``trainable`` and overwrite its leaves from ``path``."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    optimizer.init(trainable)
    saved: dict[str, Any] = mx.load(str(path))  # type: ignore[assignment]
    expected = set(dict(tree_flatten(optimizer.state)))
    if set(saved) != expected:
        raise FinetuneInputError(f"{path}: optimizer state does not match the model's adapters")
    for dotted, value in saved.items():
        node: Any = optimizer.state
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[parts[-1]] = value


def train_adapter(
    plan: TrainPlan,
    config: FinetuneConfig,
    on_progress: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """Train (or resume, or reuse) the adapter of ``plan`` with ``mlx_lm.tuner.train``."""
    started = time.monotonic()
    state = TrainingState.load(plan.adapter_dir)
    if state.done and adapter_ready(plan.adapter_dir):
        return TrainResult(plan, state, trained_steps=0, resumed_from=state.step, seconds=0.0)

    ensure_openblas()  # before the first mlx import (no-op if the caller already decided)
    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.tuner.datasets import CacheDataset, load_local_dataset
    from mlx_lm.tuner.trainer import TrainingArgs, train
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import save_config

    params = plan.params
    batch_size = int(params["batch_size"])
    np.random.seed(params["seed"])  # the order mlx_lm.lora uses: numpy first, mlx after loading
    loaded = load_fresh_model(plan.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    train_set, valid_set, _ = load_local_dataset(
        plan.data.directory, tokenizer, SimpleNamespace(mask_prompt=params["mask_prompt"])
    )
    if len(train_set) < batch_size:
        raise FinetuneInputError(
            f"the train split has {len(train_set)} example(s), fewer than finetune.batch_size={batch_size}"
        )
    notes: list[str] = []
    if len(valid_set) < batch_size:
        notes.append(f"valid split has {len(valid_set)} example(s) < batch_size {batch_size}: no valid loss curve")
        valid_set = []
    layers = int(params["num_layers"])
    if layers > len(model.layers):
        raise FinetuneInputError(f"finetune.num_layers={layers} but the model has {len(model.layers)} layers")

    mx.random.seed(params["seed"])
    model.freeze()
    lora = {"rank": params["rank"], "dropout": params["dropout"], "scale": params["scale"]}
    linear_to_lora_layers(model, layers, lora)
    optimizer = optim.Adam(learning_rate=float(params["learning_rate"]))

    start = 0
    if state.checkpoint:
        folder = plan.adapter_dir / CHECKPOINTS
        model.load_weights(str(folder / f"{state.checkpoint}_adapters.safetensors"), strict=False)
        _restore_optimizer(
            optimizer, model.trainable_parameters(), folder / f"{state.checkpoint}_optimizer.safetensors"
        )
        start = int(state.checkpoint)
        # drop what was reported after the checkpoint: those steps are trained again
        state.train_curve = [p for p in state.train_curve if p[0] <= start]
        state.valid_curve = [p for p in state.valid_curve if p[0] <= start]
        state.reports = [p for p in state.reports if p[0] <= start]
        state.trained_tokens = int(state.reports[-1][2]) if state.reports else 0
        logger.info("resuming %s from step %d of %d", plan.key, start, plan.iters)
    else:
        state = TrainingState()
    state.step, state.notes = start, notes
    state.session_starts.append(start)

    plan.adapter_dir.mkdir(parents=True, exist_ok=True)
    save_config(
        {
            "model": plan.model,
            "data": str(plan.data.directory),
            "fine_tune_type": "lora",
            "num_layers": layers,
            "lora_parameters": lora,
            **{k: v for k, v in params.items() if k not in ("num_layers",)},
        },
        plan.adapter_dir / ADAPTER_CONFIG,
    )
    remaining = plan.iters - start
    args = TrainingArgs(
        batch_size=batch_size,
        iters=remaining,
        val_batches=config.val_batches,
        steps_per_report=config.report_every,
        steps_per_eval=config.eval_every,
        steps_per_save=plan.iters + 1,  # checkpoints are written by the recorder, at global steps
        max_seq_length=int(params["max_seq_length"]),
        adapter_file=str(plan.adapter_dir / ADAPTER_FILE),
    )
    recorder = _Recorder(plan, state, model, optimizer, start, config.checkpoint_every, on_progress)
    if remaining > 0:
        # mlx-lm's own console output (loss table, progress) goes to train.log, not our stdout
        with (plan.adapter_dir / TRAIN_LOG).open("a", encoding="utf-8") as log, contextlib.redirect_stdout(log):
            train(
                model=model,
                optimizer=optimizer,
                train_dataset=CacheDataset(train_set),
                val_dataset=CacheDataset(valid_set) if len(valid_set) else None,
                args=args,
                training_callback=recorder,  # type: ignore[arg-type]
                iterate_batches=_skip_batches(start),
            )
    state.step, state.done = plan.iters, True
    state.save(plan.adapter_dir)
    return TrainResult(plan, state, trained_steps=remaining, resumed_from=start, seconds=time.monotonic() - started)
