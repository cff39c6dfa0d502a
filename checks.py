"""What export.py checks before it publishes an export: fp32 ONNX against PyTorch, int8 against fp32, and every
runtime predict.py can pick here on the checkpoint's own validation rows (through scoring.py, as it will serve).

    from checks import check_parity, check_runtimes, compare_int8, parity_batches, validation_rows
    batches = parity_batches(tokenizer, serve_length, prefix, suffix, pad_id)   # [(ids, mask)], (B,T) int64
    fp32_probs, diff = check_parity(wrapper, "model.onnx", batches, ckpt_path, out)   # ExportError over PARITY_TOL
    meta["runtime_checks"] = check_runtimes(folder, validation_rows(cfg, labels, 2000), thresholds)
torch and onnxruntime are imported where they are used.
"""
import os

import numpy as np

from common import UsageError, first_line
from data import read_csv, split_indices
from metrics import compute_metrics
from runtimes import MAX_AUC_DROP, RUNTIMES, RuntimeChoiceError, check
from scoring import encode_texts, load_model, make_windows, read_meta, score_texts, window_batch

PARITY_TOL = 1e-4
# Varied lengths and scripts; the joined ones make long rows (several windows), so the batch pads.
PARITY_TEXTS = ["", "you are an idiot", "Thanks for fixing the citation, it reads much better now.",
                "I will find where you live 🙂🙂", "Привет, мир! 世界你好 مرحبا",
                "STOP VANDALISING THIS PAGE!!!", 'Too long; maybe split it into "History" and "Today"?']
N_SHORT = len(PARITY_TEXTS)  # the second parity batch: these alone, fewer and shorter rows than the trace's
PARITY_TEXTS += [" ".join(PARITY_TEXTS * k) for k in (2, 5, 20)]


class ExportError(UsageError):
    """A problem with the checkpoint, the tokenizer, the output folder or a check: one line, names the path."""


# ----------------------------------------------------------------------------
# parity: fp32 against PyTorch, int8 against fp32


def onnx_probs(path, ids, mask):
    """An ONNX file's probabilities for one batch, on onnxruntime's CPU provider -> (B, L)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(["probs"], {"input_ids": ids, "attention_mask": mask})[0]


def parity_batches(tok, serve_length, prefix, suffix, pad_id):
    """Two padded batches of PARITY_TEXTS' windows -> [(ids, mask)], (B,T) int64: every window (traced
    on), then the short texts' windows alone, in reverse order: fewer rows, shorter, the longest unpadded."""
    seqs = encode_texts(tok, PARITY_TEXTS)
    windows = make_windows(seqs, serve_length - len(prefix) - len(suffix))
    short = np.flatnonzero(windows[0] < N_SHORT)[::-1]
    return [window_batch(seqs, windows, idx, prefix, suffix, pad_id) for idx in (np.arange(len(windows[0])), short)]


def check_parity(wrapper, path, batches, ckpt_path, out):
    """fp32 onnxruntime against PyTorch on every batch -> (onnxruntime's probs on the first, max abs diff)."""
    import torch  # heavy: export.py has it loaded already
    got, diffs = [], []
    for ids, mask in batches:
        with torch.no_grad():
            ref = wrapper(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()  # (B,L)
        got.append(onnx_probs(path, ids, mask))
        diffs.append(np.abs(got[-1] - ref).max())
    diff = float(np.max(diffs))  # numpy's max keeps a nan, which the check below refuses
    shapes = " and ".join(f"{ids.shape[0]}x{ids.shape[1]}" for ids, _ in batches)
    print(f"fp32 parity: max abs diff {diff:.2e} (onnxruntime vs PyTorch on batches of {shapes} windows x tokens, "
          f"tolerance {PARITY_TOL:g})")
    if not diff <= PARITY_TOL:  # also catches nan
        raise ExportError(f"{ckpt_path}: ONNX and PyTorch disagree by {diff:.2e} > {PARITY_TOL:g}; "
                          f"nothing written to {out} (try ATTN_IMPLEMENTATION = 'eager' in export.py)")
    return got[0], diff


def compare_int8(fp32, int8, ids, mask, fp32_probs, thresholds, ckpt_path):
    """The int8 model against fp32 on the parity batch -> its parity figures; ExportError where it gives non-finite
    probabilities."""
    q = onnx_probs(int8, ids, mask)
    if not np.isfinite(q).all():
        raise ExportError(f"{ckpt_path}: the int8 model gives non-finite probabilities; nothing written")
    th = np.asarray(thresholds)
    agree = float(((q >= th) == (fp32_probs >= th)).mean())
    qdiff = float(np.abs(q - fp32_probs).max())
    s32, s8 = os.path.getsize(fp32), os.path.getsize(int8)
    print(f"int8: {s8 / 1e6:.1f} MB vs fp32 {s32 / 1e6:.1f} MB ({s8 / s32:.0%}); vs fp32 on the parity "
          f"batch: max abs diff {qdiff:.4f}, decisions at the thresholds agree {agree:.1%} "
          f"({ids.shape[0]} windows x {q.shape[1]} labels)")
    return {"int8_max_abs_diff": qdiff, "int8_decision_agreement": agree}


# ----------------------------------------------------------------------------
# every runtime on validation rows: export.json's runtime_checks, which runtimes.choose() reads

def validation_rows(cfg, names, max_rows):
    """The checkpoint's own validation rows (its data_path, val_fraction and split_seed; its labels' columns) ->
    (texts, labels), or None where that file is not on this machine. max_rows > 0 keeps the first max_rows."""
    if not os.path.isfile(cfg["data_path"]):
        return None
    ds = read_csv(cfg["data_path"], names)
    _, val = split_indices(ds.labels, cfg["val_fraction"], cfg["split_seed"], names)
    val = val[:max_rows] if max_rows else val
    return [ds.texts[i] for i in val], ds.labels[val]


def check_runtimes(folder, rows, thresholds):
    """Every runtime predict.py can pick on this machine, scored through scoring.py on the validation rows
    against onnxruntime fp32 -> {runtime: mean AUC, its change, decision agreement, ok}. ok is False where
    mean AUC falls more than MAX_AUC_DROP below fp32's, or the runtime fails here: predict.py then never
    picks it. OpenVINO is checked at the precision this CPU gives it (bf16 or f32), and recorded so."""
    texts, labels = rows
    meta, th, ref, out = read_meta(folder), np.asarray(thresholds), None, {}
    names = meta["labels"]
    for runtime in RUNTIMES[::-1]:  # onnxruntime-fp32 first: the reference
        try:
            check(runtime, meta, folder)
        except RuntimeChoiceError:  # not exported, or not installed here
            continue
        try:
            model = load_model(folder, runtime)
            probs = score_texts(model, texts, progress=False).astype(np.float64)
            if not np.isfinite(probs).all():
                raise ValueError("non-finite probabilities")
        except Exception as e:  # a runtime that cannot run here is recorded, not fatal: fp32 still serves
            out[runtime] = {"ok": False, "error": first_line(e), "rows": len(texts)}
            print(f"{runtime}: failed on the validation rows ({first_line(e)}); predict.py will not pick it")
            continue
        ref = probs if ref is None else ref
        auc, ref_auc = (compute_metrics(p, labels, names)["aucroc_macro"] for p in (probs, ref))
        drop = ref_auc - auc
        out[runtime] = {"mean_auc": None if auc != auc else auc, "auc_drop_vs_fp32": None if drop != drop else drop,
                        "decision_agreement": float(((probs >= th) == (ref >= th)).mean()), "rows": len(texts),
                        "ok": runtime == "onnxruntime-fp32" or bool(drop <= MAX_AUC_DROP),  # nan: not shown ok
                        "precision": getattr(model.session, "precision", None)}
        print(f"{runtime}: mean AUC {auc:.4f} on {len(texts):,} validation rows ({auc - ref_auc:+.4f} vs fp32), "
              f"decisions agree with fp32 {out[runtime]['decision_agreement']:.1%}"
              + ("" if out[runtime]["ok"] else f": more than {MAX_AUC_DROP} lost, predict.py will not pick it"))
    return out
