"""Training observability: metrics.jsonl, loss.png, optional TensorBoard / W&B, FLOPs and MFU.

Only rank 0 creates a MetricsLog; other ranks log nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from tinygemma.config import SLIDING, ModelConfig
from tinygemma.fsutil import atomic_path, atomic_write_text, writing

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss.png"

# Dense bf16 peak FLOP/s of common cards, for the MFU estimate (no sparsity).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


def flops_per_token(cfg: ModelConfig, block_size: int) -> float:
    """Training FLOPs per token: 6 * params (matmuls incl. the tied head) + attention scores.

    Attention adds 6 * 2 * (q heads x head_dim) * context per layer, where a sliding layer's
    context is capped by its window (average context ~ T/2 for causal, counted as T like PaLM).
    """
    attn = 0
    for t in cfg.layer_types:
        ctx = min(block_size, cfg.sliding_window) if t == SLIDING else block_size
        attn += 12 * cfg.n_heads * cfg.head_dim * ctx
    return 6 * cfg.n_params + attn


def peak_flops(device: torch.device) -> float | None:
    """bf16 peak of the CUDA card by name; None where unknown (CPU, MPS): MFU is then not reported."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


class MetricsLog:
    """Appends records to metrics.jsonl, keeps them in `history` (saved in last.pt), draws loss.png."""

    def __init__(self, out_dir: str | Path, history: list[dict] | None = None, tensorboard: bool = False,
                 wandb_project: str | None = None, run_config: dict | None = None):
        self.out_dir = Path(out_dir)
        self.history: list[dict] = list(history or [])
        # A resumed run restarts the file from the checkpoint's history, dropping records past it.
        atomic_write_text(self.out_dir / METRICS_NAME, "".join(json.dumps(r) + "\n" for r in self.history))
        self._tb = self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:
                print("tensorboard is not installed (pip install tensorboard); logging to metrics.jsonl only")
        if wandb_project:
            try:
                import wandb

                self._wandb = wandb.init(project=wandb_project, config=run_config, resume="allow")
            except ImportError:
                print("wandb is not installed (pip install wandb); logging to metrics.jsonl only")

    def log(self, record: dict[str, Any]) -> None:
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.history.append(record)
        with writing(self.out_dir / METRICS_NAME), open(self.out_dir / METRICS_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for k, v in numbers.items():
                self._tb.add_scalar(k, v, record["step"])
        if self._wandb is not None:
            self._wandb.log(numbers, step=record["step"])

    def plot(self) -> Path:
        """Redraw loss.png: train and val loss against tokens seen."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        for key, style in (("train_loss", "-"), ("val_loss", "o-")):
            pts = [(r["tokens_seen"], r[key]) for r in self.history if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), style, label=key.replace("_", " "), markersize=4)
        ax.set_xlabel("tokens seen")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = self.out_dir / PLOT_NAME
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
