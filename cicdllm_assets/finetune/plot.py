"""The training curve (train and valid loss per step) as a PNG, with matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path

from cicdllm_assets.finetune.train import TrainingState

CURVE_FILE = "training_curve.png"


def plot_training_curve(state: TrainingState, path: Path, title: str = "") -> Path:
    """Draw ``state``'s loss curves to ``path`` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if state.train_curve:
            steps, losses = zip(*state.train_curve, strict=True)
            ax.plot(steps, losses, label="train loss", color="tab:blue")
        if state.valid_curve:
            steps, losses = zip(*state.valid_curve, strict=True)
            ax.plot(steps, losses, "o-", label="valid loss", color="tab:orange")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (mean cross-entropy per token)")
        ax.set_title(title or "LoRA training")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
