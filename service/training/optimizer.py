"""The optimiser: AdamW that decays weights only, on a learning-rate schedule of linear warmup then cosine
decay (or a constant rate)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def make_optimizer(net: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``net``, weight decay on weights and none on biases and norms."""
    return torch.optim.AdamW(param_groups(net, weight_decay), lr=lr)


def param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The parameters in two groups: weights (``ndim > 1``) decayed, biases and norm scales not."""
    # Decaying norm scales and biases only pulls them towards 0 for no gain in generalisation.
    decay = [p for p in net.parameters() if p.requires_grad and p.ndim > 1]
    keep = [p for p in net.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def lr_factor(step: int, total: int, warmup: int, schedule: str = "cosine") -> float:
    """The learning-rate multiplier for optimisation step ``step`` (0-based) of ``total``: linear warmup
    over ``warmup`` steps, then constant or a cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
