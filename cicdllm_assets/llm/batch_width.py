"""How many sequences the in-process backend decodes together (``generation.batch_size: auto``).

On a CPU a decode step of a small model costs about the same for 1 sequence as for
dozens (reading the weights and the per-step Python and graph overhead dominate), so
aggregate tokens/s grows with the width until the matmuls become compute bound. Two
limits pick the width:

* compute: ``width x parameters`` per step stays under :data:`STEP_PARAMETER_BUDGET`
  (about where the measured tokens/s curve flattens on a 2-core CPU);
* memory: every sequence's KV cache (prompt + completion tokens) plus its share of the
  prefill scratch (attention scores, activations, logits of one layer) fits in
  :data:`MEMORY_FRACTION` of the memory available when the width is chosen.

The result is clamped to ``[1, MAX_WIDTH]``. Domain code: no Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_WIDTH = 128
"""Upper bound of an automatic width."""

STEP_PARAMETER_BUDGET = 13_000_000_000
"""Width x model parameters per decoding step (SmolLM2-135M: 96 sequences)."""

MEMORY_FRACTION = 0.5
"""Share of the available memory the sequences of one batch may use."""

FLOAT_BYTES = 4
"""Activations and scores are float32 on mlx's CPU backend."""


@dataclass(frozen=True)
class ModelShape:
    """What the width depends on, read from a loaded model and its config."""

    parameters: int
    weight_bytes: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    kv_itemsize: int

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys and values of one token in every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.kv_itemsize

    def bytes_per_sequence(self, tokens: int) -> int:
        """Peak memory one sequence of ``tokens`` (prompt + completion) adds to a batch."""
        kv = self.kv_bytes_per_token * tokens
        # one layer's attention scores at prefill, the softmax's weights and their copy back
        # into mlx (cpu_kernels); an upper bound: a prefill pass takes at most
        # mlx_backend.PREFILL_STEP queries, not all ``tokens``
        scores = 3 * self.heads * tokens * tokens * FLOAT_BYTES
        activations = tokens * (4 * self.hidden + 3 * self.intermediate) * FLOAT_BYTES
        logits = 2 * self.vocab * FLOAT_BYTES
        return kv + scores + activations + logits


@dataclass(frozen=True)
class WidthChoice:
    """An automatic width and the figures it came from."""

    width: int
    sequence_tokens: int
    bytes_per_sequence: int
    memory_budget: int
    """Bytes the batch's sequences may use (``MEMORY_FRACTION`` of ``available``)."""
    available: int
    memory_width: int
    compute_width: int

    def describe(self) -> str:
        """One line for logs."""
        limit = "memory" if self.memory_width < self.compute_width else "compute"
        return (
            f"batch width {self.width} ({limit} bound: compute allows {self.compute_width}, "
            f"{self.memory_budget / 2**20:.0f} MiB budget allows {self.memory_width} sequences of "
            f"{self.sequence_tokens} tokens at {self.bytes_per_sequence / 2**20:.1f} MiB each)"
        )


def choose_width(shape: ModelShape, sequence_tokens: int, available: int) -> WidthChoice:
    """The width for sequences of up to ``sequence_tokens`` with ``available`` bytes free."""
    if sequence_tokens < 1:
        raise ValueError(f"sequence_tokens must be >= 1, got {sequence_tokens}")
    per_sequence = shape.bytes_per_sequence(sequence_tokens)
    budget = int(available * MEMORY_FRACTION)
    memory_width = budget // per_sequence
    compute_width = STEP_PARAMETER_BUDGET // max(1, shape.parameters)
    width = max(1, min(memory_width, compute_width, MAX_WIDTH))
    return WidthChoice(
        width=width,
        sequence_tokens=sequence_tokens,
        bytes_per_sequence=per_sequence,
        memory_budget=budget,
        available=available,
        memory_width=memory_width,
        compute_width=compute_width,
    )


def available_memory() -> int:
    """Bytes the OS reports available now (psutil)."""
    import psutil

    return int(psutil.virtual_memory().available)


def model_shape(model: Any, config: dict[str, Any]) -> ModelShape:
    """The :class:`ModelShape` of a loaded mlx-lm model (``config`` is its config.json)."""
    from mlx.utils import tree_flatten

    flat: Any = tree_flatten(model.parameters())
    weights = [pair[1] for pair in flat]
    parameters = sum(int(w.size) for w in weights)
    weight_bytes = sum(int(w.nbytes) for w in weights)
    itemsize = max((int(w.itemsize) for w in weights if w.ndim == 2), default=FLOAT_BYTES)
    nested = config.get("text_config")
    text: dict[str, Any] = nested if isinstance(nested, dict) else config
    hidden = int(text.get("hidden_size", 0))
    heads = int(text.get("num_attention_heads", 1))
    layers = int(text.get("num_hidden_layers", len(getattr(model, "layers", [])) or 1))
    return ModelShape(
        parameters=parameters,
        weight_bytes=weight_bytes,
        layers=layers,
        heads=heads,
        kv_heads=int(text.get("num_key_value_heads", heads)),
        head_dim=int(text.get("head_dim") or (hidden // heads if heads else 0)),
        hidden=hidden,
        intermediate=int(text.get("intermediate_size", 4 * hidden)),
        vocab=int(text.get("vocab_size", 0)),
        kv_itemsize=itemsize,
    )
