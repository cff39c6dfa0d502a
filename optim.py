"""What the optimiser does: the learning-rate schedule and its budget horizon, AdamW's parameter groups, and
the loss weights. Functions of their arguments alone, so they are tested without training.

    from optim import budget_horizon, get_lr, make_optimizer, pos_weights
    optimizer = make_optimizer(model, cfg, fused=False)   # groups carry "peak_lr"; train.py scales it
    horizon = budget_horizon(step, total_steps, budget_s, elapsed_s, mean_step_s, saved_horizon)
    for g in optimizer.param_groups: g["lr"] = g["peak_lr"] * get_lr(step, horizon, cfg.warmup_steps)
"""
import numpy as np
import torch

MIN_TIMED_STEPS = 5  # steps an attempt times before its mean step time sizes a budget's schedule


def get_lr(step, total_steps, warmup_steps):
    """Multiplier on the peak lr: linear warmup, then linear decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def budget_horizon(step, total_steps, budget_s, elapsed_s, mean_step_s, saved_horizon):
    """The step the schedule ends at. Without a budget (budget_s 0), total_steps. With one, the steps that
    fit in the time left at this attempt's mean step time (mean_step_s, None until it has timed
    MIN_TIMED_STEPS); before that, a resumed run keeps its saved horizon rather than jump to total_steps,
    and the old step time is not used (on another machine it would mislead). Never beyond total_steps."""
    if not budget_s:
        return total_steps
    if mean_step_s is not None:
        return min(total_steps, step + int((budget_s - elapsed_s) / mean_step_s))
    return total_steps if saved_horizon is None else min(total_steps, saved_horizon)


def make_optimizer(model, cfg, fused):
    """AdamW in four groups: encoder at lr, head at head_lr, each with weight decay on matrices only
    (none on biases and LayerNorm weights)."""
    groups = []
    for part, lr in ((model.encoder, cfg.lr), (model.head, cfg.head_lr)):
        params = [p for p in part.parameters() if p.requires_grad]
        for decayed, wd in ((True, cfg.weight_decay), (False, 0.0)):
            chosen = [p for p in params if (p.ndim >= 2) == decayed]
            if chosen:
                groups.append({"params": chosen, "weight_decay": wd, "peak_lr": lr})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused)


def pos_weights(labels, mode, cap):
    """Per-label BCE weight on positives: sqrt(neg/pos) capped, so rare labels are not drowned."""
    if mode == "none":
        return torch.ones(labels.shape[1])
    pos = labels.sum(0).clip(min=1)
    return torch.tensor(np.minimum(np.sqrt((len(labels) - pos) / pos), cap), dtype=torch.float32)
