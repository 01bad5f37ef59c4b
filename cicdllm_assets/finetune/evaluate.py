"""Base model vs base + adapter on the splits the adapter never trained on.

Loss is mlx-lm's own (``mlx_lm.tuner.trainer.evaluate``: mean cross-entropy per target
token, answer tokens only when ``mask_prompt``), over every example of the split (batch
size 1, so none is dropped); perplexity is ``exp(loss)``. The adapter is applied with
mlx-lm's ``load_adapters``, exactly as ``mlx_lm.generate --adapter-path`` does.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any

from cicdllm_assets.config.models import FinetuneConfig
from cicdllm_assets.finetune.train import TrainPlan, adapter_ready
from cicdllm_assets.llm.mlx_backend import load_fresh_model
from cicdllm_assets.llm.openblas import ensure_openblas

EVAL_SPLITS: tuple[str, ...] = ("test", "valid")
NO_TEST_FILES = "not evaluated: no test files"
EVALUATED = "evaluated"
QUESTION_CHARS = 300


@dataclass
class SplitScore:
    """Loss and perplexity of one split, base vs adapter (None when not evaluated)."""

    split: str
    examples: int
    base_loss: float | None = None
    adapter_loss: float | None = None

    @property
    def base_perplexity(self) -> float | None:
        """exp(base loss)."""
        return math.exp(self.base_loss) if self.base_loss is not None else None

    @property
    def adapter_perplexity(self) -> float | None:
        """exp(adapter loss)."""
        return math.exp(self.adapter_loss) if self.adapter_loss is not None else None

    @property
    def loss_reduction(self) -> float | None:
        """Relative loss reduction of the adapter, (base - adapter) / base."""
        if self.base_loss is None or self.adapter_loss is None or self.base_loss == 0:
            return None
        return (self.base_loss - self.adapter_loss) / self.base_loss

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, derived values included."""
        return {
            **asdict(self),
            "base_perplexity": self.base_perplexity,
            "adapter_perplexity": self.adapter_perplexity,
            "loss_reduction": self.loss_reduction,
        }


@dataclass
class Sample:
    """One side-by-side generation for a held-out question."""

    question: str
    base: str
    adapter: str
    reference: str


@dataclass
class EvaluationResult:
    """Everything the evaluation asset reports (and the history stores)."""

    dataset_version: str
    dataset_hash: str
    adapter_key: str
    model: str
    status: str
    splits: dict[str, SplitScore]
    samples: list[Sample] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    seconds: float = 0.0

    @property
    def evaluated(self) -> bool:
        """False when there were no test files."""
        return self.status == EVALUATED

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        data = asdict(self)
        data["splits"] = {name: score.to_dict() for name, score in self.splits.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        """Inverse of :meth:`to_dict`."""
        score_fields = SplitScore.__dataclass_fields__
        splits = {
            name: SplitScore(**{k: v for k, v in score.items() if k in score_fields})
            for name, score in data["splits"].items()
        }
        samples = [Sample(**s) for s in data.get("samples", [])]
        keep = {k: v for k, v in data.items() if k not in ("splits", "samples")}
        return cls(**keep, splits=splits, samples=samples)

    def markdown(self) -> str:
        """Loss table and side-by-side generations as Markdown."""
        lines = [
            f"Dataset version `{self.dataset_version}`, adapter `{self.adapter_key}`, base model `{self.model}`.",
            "",
        ]
        if not self.evaluated:
            lines += [f"**{self.status}**", ""]
        lines += [
            "| split | examples | base loss | adapter loss | base ppl | adapter ppl | loss reduction |",
            "|---|---|---|---|---|---|---|",
        ]
        for score in self.splits.values():
            lines.append(
                f"| {score.split} | {score.examples} | {_num(score.base_loss)} | {_num(score.adapter_loss)} | "
                f"{_num(score.base_perplexity)} | {_num(score.adapter_perplexity)} | "
                f"{_pct(score.loss_reduction)} |"
            )
        for i, sample in enumerate(self.samples, 1):
            lines += [
                "",
                f"### Held-out question {i}",
                "",
                _quote(sample.question),
                "",
                "| base | adapter | reference |",
                "|---|---|---|",
                f"| {_cell(sample.base)} | {_cell(sample.adapter)} | {_cell(sample.reference)} |",
            ]
        return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _cell(text: str) -> str:
    return text.strip().replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or "_(empty)_"


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" for line in text.strip().splitlines()) or "> "


def _split_losses(model: Any, datasets: dict[str, Any], max_seq_length: int) -> dict[str, float]:
    from mlx_lm.tuner.datasets import CacheDataset
    from mlx_lm.tuner.trainer import evaluate

    return {
        split: float(
            evaluate(
                model=model, dataset=CacheDataset(data), batch_size=1, num_batches=-1, max_seq_length=max_seq_length
            )
        )
        for split, data in datasets.items()
    }


def _answers(model: Any, tokenizer: Any, records: list[dict[str, Any]], max_tokens: int) -> list[str]:
    """Greedy answers to each record's conversation without its last (assistant) turn."""
    from mlx_lm.generate import generate

    answers = []
    for record in records:
        prompt = tokenizer.apply_chat_template(record["messages"][:-1], add_generation_prompt=True)
        answers.append(generate(model, tokenizer, prompt=prompt, max_tokens=max_tokens, verbose=False))
    return answers


def evaluate_adapter(plan: TrainPlan, config: FinetuneConfig) -> EvaluationResult:
    """Losses of the base model and of base + the finished adapter of ``plan``, plus samples."""
    started = time.monotonic()
    if not adapter_ready(plan.adapter_dir):
        raise FileNotFoundError(f"no finished adapter at {plan.adapter_dir}: materialize `adapter` first")
    data = plan.data
    splits = {split: SplitScore(split=split, examples=data.counts[split]) for split in EVAL_SPLITS}
    status = EVALUATED if data.counts["test"] else NO_TEST_FILES
    result = EvaluationResult(
        dataset_version=data.version,
        dataset_hash=data.content_hash,
        adapter_key=plan.key,
        model=plan.model,
        status=status,
        splits=splits,
    )
    present = [split for split in EVAL_SPLITS if data.counts[split]]
    if not present:
        return result

    ensure_openblas()  # before the first mlx import
    from mlx_lm.tuner.datasets import load_local_dataset
    from mlx_lm.tuner.utils import load_adapters

    loaded = load_fresh_model(plan.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    _, valid_set, test_set = load_local_dataset(
        data.directory, tokenizer, SimpleNamespace(mask_prompt=plan.params["mask_prompt"])
    )
    datasets = {split: d for split, d in (("test", test_set), ("valid", valid_set)) if split in present}
    max_seq = int(plan.params["max_seq_length"])
    sample_records = data.read("test")[: config.samples]
    base_losses = _split_losses(model, datasets, max_seq)
    base_answers = _answers(model, tokenizer, sample_records, config.sample_max_tokens)
    load_adapters(model, str(plan.adapter_dir))
    adapter_losses = _split_losses(model, datasets, max_seq)
    adapter_answers = _answers(model, tokenizer, sample_records, config.sample_max_tokens)
    for split in datasets:
        splits[split].base_loss, splits[split].adapter_loss = base_losses[split], adapter_losses[split]
    for record, base, tuned in zip(sample_records, base_answers, adapter_answers, strict=True):
        messages = record["messages"]
        question = str(messages[-2].get("content", ""))
        if len(question) > QUESTION_CHARS:
            question = question[:QUESTION_CHARS] + "…"
        result.samples.append(
            Sample(question=question, base=base, adapter=tuned, reference=str(messages[-1].get("content", "")))
        )
    result.seconds = time.monotonic() - started
    return result
