"""Validation during training (train.py): every rank scores its share of the validation rows, rank 0
computes the metrics once on the complete set, and the per-example logits are kept.

    from validation import save_predictions, validate
    metrics, logits, thresholds = validate(model, seqs, val_idx, labels, names, cfg, device, autocast, rank=0, world=1)
    save_predictions("runs/mini/val_predictions.npz", ds, val_idx, logits, thresholds, step, names)
The metrics: mean AUC and per-label AUC, loss, F1 at 0.5, F1 at the f1 policy's thresholds fitted on these rows
as they are ("tuned", in sample), and the decisions at cfg.base_rates (decisions.fit: calibrated, reweighted to
those rates, F1 and calibration error). The logits go into best.pt, where export.py fits the served decisions.
"""
import numpy as np
import torch
import torch.distributed as dist

import decisions
from common import atomic_write, sigmoid
from data import pad_batch, sorted_batches
from metrics import compute_metrics


@torch.no_grad()
def predict_logits(model, seqs, rows, n_labels, batch_size, device, autocast, max_tokens=None):
    """Logits (len(rows), n_labels) in float32, batches sorted by length (least padding), order kept; with
    max_tokens, a batch of long rows holds fewer of them."""
    model.eval()
    out = np.zeros((len(rows), n_labels), dtype=np.float32)
    for b in sorted_batches(np.array([len(seqs[i]) for i in rows]), batch_size, max_tokens):
        ids, mask = pad_batch([seqs[rows[i]] for i in b])
        with autocast:
            logits = model(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        out[b] = logits.float().cpu().numpy()
    model.train()
    return out


def validate(model, seqs, val_idx, labels, names, cfg, device, autocast, rank, world):
    """Each rank scores its share of the validation rows; rank 0 gathers them, computes the metrics once on the
    complete set, and every rank gets them back -> (metrics, logits, raw thresholds) on rank 0, (metrics, None,
    None) on the others."""
    mine = np.arange(rank, len(val_idx), world)
    # No batch wider in tokens than eval_batch_size rows at the training length: 512-token batches of 64 took
    # buffers of 50-200 MB, mapped afresh above the heap training had left, and made the run's peak RSS
    # (issue 28); bounded so, validation's buffers fit in what a training step frees. A CPU's malloc only.
    logits = predict_logits(model, seqs, val_idx[mine], len(names), cfg.eval_batch_size, device, autocast,
                            max_tokens=cfg.eval_batch_size * cfg.max_length if device.type == "cpu" else None)
    parts = [(mine, logits)]
    if world > 1:
        parts = [None] * world if rank == 0 else None
        dist.gather_object((mine, logits), parts, dst=0)
    result = [None]
    if rank == 0:
        full = np.zeros((len(val_idx), len(names)), dtype=np.float32)
        for idx, part in parts:
            full[idx] = part
        y = labels[val_idx]
        thresholds = decisions.own_rate_thresholds(full, y, names)
        m = compute_metrics(sigmoid(full), y, names, thresholds)
        m["loss"] = float(np.mean(np.maximum(full, 0) - full * y + np.log1p(np.exp(-np.abs(full)))))
        m.update(at_rates(full, y, names, decisions.parse_rates(cfg.base_rates, "base_rates", names)))
        result = [(m, full, thresholds)]
    if world > 1:
        dist.broadcast_object_list(result, src=0)
    return result[0] if rank == 0 else (result[0][0], None, None)


def at_rates(logits, labels, names, rates):
    """The decisions at rates: F1 at the f1 policy's thresholds and the calibration error, calibrated and
    reweighted -> {macro_f1_at_rates, micro_f1_at_rates, f1_<label>_at_rates, ece_<label>_at_rates, ece_max_at_rates}."""
    v = decisions.fit(logits, labels, names, rates)["validation"]
    m = {"macro_f1_at_rates": v["macro_f1"], "micro_f1_at_rates": v["micro_f1"], "ece_max_at_rates": max(v["ece"].values())}
    m.update({f"{k}_{n}_at_rates": v[k][n] for k in ("f1", "ece") for n in names})
    return m


def save_predictions(path, ds, val_idx, logits, thresholds, step, names):
    """Per-example validation logits and probabilities, so any metric can be recomputed without the model."""
    arrays = dict(ids=np.array([ds.ids[i] for i in val_idx]), rows=val_idx, probs=sigmoid(logits).astype(np.float32),
                  logits=logits, labels=ds.labels[val_idx], thresholds=np.asarray(thresholds), step=step,
                  label_names=np.array(names))
    atomic_write(path, lambda f: np.savez(f, **arrays))
