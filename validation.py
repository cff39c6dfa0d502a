"""Validation during training (train.py): every rank scores its share of the validation rows, rank 0
computes the metrics once on the complete set, and the per-example probabilities are kept.

    from validation import run_eval, save_predictions
    metrics, probs, thresholds = run_eval(model, seqs, val_idx, labels, cfg, device, autocast, rank=0, world=1)
    save_predictions("runs/mini/val_predictions.npz", ds, val_idx, probs, thresholds, step)
"""
import numpy as np
import torch
import torch.distributed as dist

from checkpoint import atomic_write
from data import LABELS, pad_batch, sorted_batches
from metrics import evaluate, tune_thresholds


@torch.no_grad()
def predict_logits(model, seqs, rows, batch_size, device, autocast):
    """Logits (len(rows), 6) in float32, batches sorted by length (least padding), order kept."""
    model.eval()
    out = np.zeros((len(rows), len(LABELS)), dtype=np.float32)
    for b in sorted_batches(np.array([len(seqs[i]) for i in rows]), batch_size):
        ids, mask = pad_batch([seqs[rows[i]] for i in b])
        with autocast:
            logits = model(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        out[b] = logits.float().cpu().numpy()
    model.train()
    return out


def run_eval(model, seqs, val_idx, labels, cfg, device, autocast, rank, world):
    """Each rank scores its share of the validation rows; rank 0 gathers them, computes the
    metrics once on the complete set, and every rank gets the same answer back."""
    mine = np.arange(rank, len(val_idx), world)
    logits = predict_logits(model, seqs, val_idx[mine], cfg.eval_batch_size, device, autocast)
    parts = [(mine, logits)]
    if world > 1:
        parts = [None] * world if rank == 0 else None
        dist.gather_object((mine, logits), parts, dst=0)
    result = [None]
    if rank == 0:
        full = np.zeros((len(val_idx), len(LABELS)), dtype=np.float32)
        for idx, part in parts:
            full[idx] = part
        y = labels[val_idx]
        probs = 1 / (1 + np.exp(-full.astype(np.float64)))
        thresholds = tune_thresholds(probs, y)
        m = evaluate(probs, y, thresholds)
        m["loss"] = float(np.mean(np.maximum(full, 0) - full * y + np.log1p(np.exp(-np.abs(full)))))
        result = [(m, probs.astype(np.float32), thresholds)]
    if world > 1:
        dist.broadcast_object_list(result, src=0)
    return result[0] if rank == 0 else (result[0][0], None, None)


def save_predictions(path, ds, val_idx, probs, thresholds, step):
    """Per-example validation probabilities, so any metric can be recomputed without the model."""
    arrays = dict(ids=np.array([ds.ids[i] for i in val_idx]), rows=val_idx, probs=probs, labels=ds.labels[val_idx],
                  thresholds=np.asarray(thresholds), step=step, label_names=np.array(LABELS))
    atomic_write(path, lambda f: np.savez(f, **arrays))
