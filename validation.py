"""Validation during training (train.py): every rank scores its share of the validation rows, rank 0
computes the metrics once on the complete set, and the per-example logits are kept.

    from validation import run_eval, save_predictions
    metrics, logits, thresholds = run_eval(model, seqs, val_idx, labels, cfg, device, autocast, rank=0, world=1)
    save_predictions("runs/mini/val_predictions.npz", ds, val_idx, logits, thresholds, step)
The metrics include the decisions at cfg.base_rates (decisions.py): F1 at thresholds tuned on these rows
reweighted to those rates, after calibration, and the calibration error there. The logits go into the
checkpoint, where export.py fits the calibration and the policies it ships.
"""
import numpy as np
import torch
import torch.distributed as dist

import decisions
from checkpoint import atomic_write
from data import LABELS, pad_batch, sorted_batches
from metrics import evaluate, tune_thresholds


@torch.no_grad()
def predict_logits(model, seqs, rows, batch_size, device, autocast, max_tokens=None):
    """Logits (len(rows), 6) in float32, batches sorted by length (least padding), order kept; with max_tokens,
    a batch of long rows holds fewer of them."""
    model.eval()
    out = np.zeros((len(rows), len(LABELS)), dtype=np.float32)
    for b in sorted_batches(np.array([len(seqs[i]) for i in rows]), batch_size, max_tokens):
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
    # No batch wider in tokens than eval_batch_size rows at the training length: 512-token batches of 64 took
    # buffers of 50-200 MB, mapped afresh above the heap training had left, and made the run's peak RSS
    # (issue 28); bounded so, validation's buffers fit in what a training step frees. A CPU's malloc only.
    logits = predict_logits(model, seqs, val_idx[mine], cfg.eval_batch_size, device, autocast,
                            max_tokens=cfg.eval_batch_size * cfg.max_length if device.type == "cpu" else None)
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
        m.update(at_rates(full, y, decisions.parse_rates(cfg.base_rates, "base_rates")))
        result = [(m, full, thresholds)]
    if world > 1:
        dist.broadcast_object_list(result, src=0)
    return result[0] if rank == 0 else (result[0][0], None, None)


def at_rates(logits, labels, rates):
    """Calibrated, reweighted to rates, F1 at the f1 policy's thresholds and the calibration error there ->
    {macro_f1_at_rates, micro_f1_at_rates, f1_<label>_at_rates, ece_<label>_at_rates, ece_max_at_rates}."""
    fitted = decisions.fit(logits, labels, rates)
    probs = decisions.apply_calibration(logits, fitted["calibration"])
    s = decisions.summary(probs, labels, decisions.rate_weights(labels, rates),
                          [fitted["policies"]["f1"]["thresholds"][n] for n in LABELS])
    m = {"macro_f1_at_rates": s["macro_f1"], "micro_f1_at_rates": s["micro_f1"], "ece_max_at_rates": float(s["ece"].max())}
    m.update({f"{k}_{n}_at_rates": float(x) for k in ("f1", "ece") for n, x in zip(LABELS, s[k])})
    return m


def save_predictions(path, ds, val_idx, logits, thresholds, step):
    """Per-example validation logits and probabilities, so any metric can be recomputed without the model."""
    probs = (1 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    arrays = dict(ids=np.array([ds.ids[i] for i in val_idx]), rows=val_idx, probs=probs, logits=logits,
                  labels=ds.labels[val_idx],
                  thresholds=np.asarray(thresholds), step=step, label_names=np.array(LABELS))
    atomic_write(path, lambda f: np.savez(f, **arrays))
