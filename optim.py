"""What the optimiser does: the learning-rate schedule, AdamW's parameter groups, the loss weights, and the
moving average of the weights.

    from optim import get_lr, make_optimizer, pos_weights, update_ema
    optimizer = make_optimizer(model, cfg, fused=False)   # groups carry "peak_lr"; train.py scales it
    for g in optimizer.param_groups: g["lr"] = g["peak_lr"] * get_lr(step, total_steps, cfg.warmup_steps)
    update_ema(ema_model, model, cfg.ema_decay, step)   # after each optimizer step
Functions of their arguments alone (update_ema changes ema_model in place), so they are tested without training.
"""
import re

import numpy as np
import torch

from config import ConfigError


def get_lr(step, total_steps, warmup_steps):
    """Multiplier on the peak lr: linear warmup, then linear decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def layer_depth(name, num_layers):
    """Depth of an encoder parameter: embeddings 0, transformer layer i -> i + 1, anything above -> top."""
    if name.startswith("embeddings."):
        return 0
    found = re.search(r"(?:^|\.)layer\.(\d+)\.", name)
    return int(found.group(1)) + 1 if found else num_layers + 1


def make_optimizer(model, cfg, fused):
    """AdamW; no weight decay on 1-D tensors (biases, LayerNorm). The head takes head_lr, the encoder's
    top layer takes lr, and each layer below takes layer_lr_decay x the one above (general features move least)."""
    num_layers = model.encoder.config.num_hidden_layers
    depths = {name: layer_depth(name, num_layers) for name, _ in model.encoder.named_parameters()}
    if cfg.layer_lr_decay < 1 and not set(range(1, num_layers + 1)) <= set(depths.values()):
        raise ConfigError(f"layer_lr_decay {cfg.layer_lr_decay}: the encoder's parameters are not named "
                          f"'layer.N.' for its {num_layers} layers (a BERT-style encoder is needed)")
    parts = {}  # (part, peak lr) -> (decayed, undecayed); no layer decay: the 4 groups of old last.pt files
    for name, p in model.encoder.named_parameters():
        lr = cfg.lr * cfg.layer_lr_decay ** max(0, num_layers - depths[name])
        if p.requires_grad:
            parts.setdefault(("encoder", lr), ([], []))[p.ndim < 2].append(p)
    for p in model.head.parameters():
        if p.requires_grad:
            parts.setdefault(("head", cfg.head_lr), ([], []))[p.ndim < 2].append(p)
    groups = [{"params": params, "weight_decay": wd, "peak_lr": lr}
              for (_, lr), (decayed, undecayed) in parts.items()
              for params, wd in ((decayed, cfg.weight_decay), (undecayed, 0.0)) if params]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused)


def pos_weights(labels, mode, cap):
    """Per-label BCE weight on positives: sqrt(neg/pos) capped, so rare labels are not drowned."""
    if mode == "none":
        return torch.ones(labels.shape[1])
    pos = labels.sum(0).clip(min=1)
    return torch.tensor(np.minimum(np.sqrt((len(labels) - pos) / pos), cap), dtype=torch.float32)


@torch.no_grad()
def update_ema(ema_model, model, decay, step):
    """ema <- d * ema + (1 - d) * weights, d = min(decay, (1 + step) / (10 + step)). The ramp forgets the early,
    barely trained weights: until it reaches `decay` (step 4,490 for 0.998) the average's mean age is a tenth of
    the steps so far, most of its weight on the last quarter; after that it spans about 1 / (1 - decay) steps.
    Buffers (position ids) are constants and are not averaged."""
    d = min(decay, (1 + step) / (10 + step))
    for averaged, current in zip(ema_model.parameters(), model.parameters(), strict=True):
        averaged.lerp_(current, 1 - d)
