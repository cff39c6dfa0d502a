"""Inference speed on CPU: PyTorch eager against onnxruntime fp32, graph-optimized fp32 and int8.

    python bench/predict_speed.py                                  # runs/mini/best.pt (< 10 min on 2 cores)
    python bench/predict_speed.py --checkpoint runs/mini_average/best.pt
    python bench/predict_speed.py --quick                          # tiny random model (CI, seconds)

Rows: the first 2,000 rows of the validation split the mini configs use (split_indices(labels, 0.1,
1234) on ../shared/data/jigsaw/train.csv). The checkpoint is exported into a temporary folder with
export.py (fp32 + int8; once more with eager attention for onnxruntime.transformers' fusions, which
do not match sdpa's graph: see ort_optimize). Every variant scores the same windows (predict.py's:
tokenized whole, cut into max_length windows, batches sorted by length and padded to their longest),
at batch 32 and at batch 1 (the first --batch1_rows rows: one window per call is slow for eager
PyTorch). Only the model calls are timed: tokenizing is the same for all and reported once. Each
comment's probabilities are the max over its windows, as predict.py scores; mean AUC over 6 labels.
Threads: the physical cores for torch and onnxruntime alike. Writes bench/results/predict_speed.json.
"""
import argparse
import contextlib
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (ROOT, SAMPLE, SHARED_NOTE, SHARED_TRAIN, BenchError, add_common_args, describe, fmt,  # noqa: E402
                    machine, main_guard, markdown_table, measure_peak, mfu, non_embedding_params, peak_lines,
                    physical_cores, ratio, require_checkpoint, target, targets_table, train_tiny, write_results)

WARMUP_CALLS = 3  # first calls allocate and pick kernels; left out of every timing


# ----------------------------------------------------------------------------
# rows, windows, batches


def load_rows(path, n):
    """The first n rows of the validation split the mini configs use -> (texts, labels (n,6))."""
    from data import read_csv, split_indices
    ds = read_csv(path)
    _, val = split_indices(ds.labels, 0.1, 1234)
    rows = val[:n]
    return [ds.texts[i] for i in rows], ds.labels[rows]


def make_batches(meta, seqs, windows, batch_size, n_texts=None):
    """predict.score's batches: windows sorted by length, padded to their longest -> [(window idx, ids, mask)].
    n_texts keeps the windows of the first n_texts comments only."""
    import numpy as np

    from data import sorted_batches
    from predict import window_batch
    owner, start, end = windows
    keep = np.flatnonzero(owner < (n_texts if n_texts is not None else len(seqs)))
    out = []
    for b in sorted_batches((end - start)[keep], batch_size):
        idx = keep[b]
        ids, mask = window_batch(seqs, windows, idx, meta["prefix_ids"], meta["suffix_ids"], meta["pad_id"])
        out.append((idx, ids, mask))
    return out


def time_variant(call, batches, owner, n_texts):
    """Run every batch (warm-up calls first, untimed) -> (seconds, probs (n_texts, 6): max over windows)."""
    import numpy as np
    for _, ids, mask in batches[:WARMUP_CALLS]:
        call(ids, mask)
    out = np.zeros((n_texts, 6), dtype=np.float32)
    seconds = 0.0
    for idx, ids, mask in batches:
        t0 = time.perf_counter()
        probs = call(ids, mask)
        seconds += time.perf_counter() - t0
        np.maximum.at(out, owner[idx], probs)  # as predict.score: the max over a comment's windows
    return seconds, out


# ----------------------------------------------------------------------------
# the variants: each a function (ids, mask) -> probs (B, 6) numpy


def torch_eager(ckpt):
    import torch

    from export import make_wrapper
    from checkpoint import model_from_checkpoint
    wrapper = make_wrapper(model_from_checkpoint(ckpt))  # sigmoid inside, like the ONNX graph

    def call(ids, mask):
        with torch.inference_mode():
            return wrapper(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    return call


def ort_call(path):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = physical_cores()
    opts.inter_op_num_threads = 1  # as predict.load_model: BERT's graph is a chain
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return lambda ids, mask: sess.run(["probs"], {"input_ids": ids, "attention_mask": mask})[0]


def ort_optimize(ckpt_path, tmp, enc_cfg):
    """onnxruntime.transformers' BERT fusions (attention, LayerNorm, GELU) -> (model path, {fused op: count}).

    They match the attention pattern of transformers' eager attention, not sdpa's (export.py's
    default): on an sdpa export only LayerNorm and GELU fuse, and it runs no faster. So export once
    more with eager attention (export checks parity with PyTorch as always), then optimize."""
    import logging

    import export
    from onnxruntime.transformers.optimizer import optimize_model
    saved, export.ATTN_IMPLEMENTATION = export.ATTN_IMPLEMENTATION, "eager"  # read by export() at call time
    try:
        with contextlib.redirect_stdout(sys.stderr):
            export.export(ckpt_path, os.path.join(tmp, "export_eager"))
    finally:
        export.ATTN_IMPLEMENTATION = saved
    src, dst = os.path.join(tmp, "export_eager", "model.onnx"), os.path.join(tmp, "model.opt.onnx")
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)  # fusion chatter
    opt = optimize_model(src, model_type="bert", num_heads=enc_cfg["num_attention_heads"],
                         hidden_size=enc_cfg["hidden_size"])
    opt.save_model_to_file(dst)
    return dst, {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


# ----------------------------------------------------------------------------


def run(argv=None):
    p = argparse.ArgumentParser(description="Inference speed: PyTorch eager vs onnxruntime fp32 / optimized / int8.")
    add_common_args(p)
    p.add_argument("--checkpoint", help="a checkpoint written by train.py (default runs/mini/best.pt)")
    p.add_argument("--rows", type=int, default=2000, help="validation rows scored at batch 32 (default 2000)")
    p.add_argument("--batch1_rows", type=int, default=300, help="of those, scored at batch 1 (default 300)")
    args = p.parse_args(argv)
    if args.rows < 1 or args.batch1_rows < 1:  # every figure is per row
        raise BenchError(f"--rows and --batch1_rows must be >= 1, got {args.rows} and {args.batch1_rows}")
    data = SAMPLE if args.quick else SHARED_TRAIN
    if args.checkpoint or not args.quick:  # the checkpoint first: it is what a user names on the command line
        require_checkpoint(args.checkpoint or os.path.join(ROOT, "runs", "mini", "best.pt"))
    if args.quick:
        args.rows, args.batch1_rows = 64, 16
    elif not os.path.isfile(data):
        raise BenchError(f"{data}: not found; the real rows live in ../shared (see its README), or use --quick")

    import numpy as np
    import torch
    from tokenizers import Tokenizer

    import export
    from metrics import evaluate
    from checkpoint import load_checkpoint, model_from_checkpoint
    from predict import encode_texts, make_windows, read_meta
    threads = physical_cores()
    torch.set_num_threads(threads)
    dev = machine()
    texts, labels = load_rows(data, args.rows)
    with tempfile.TemporaryDirectory(prefix="predict_speed-") as tmp:
        ckpt_path = args.checkpoint or os.path.join(ROOT, "runs", "mini", "best.pt")
        if args.quick and not args.checkpoint:
            ckpt_path = train_tiny(tmp)
        ckpt = load_checkpoint(ckpt_path)  # a bad file fails here, in seconds
        enc_cfg = ckpt["model_config"]["encoder_config"]
        params = non_embedding_params(model_from_checkpoint(ckpt))
        out = os.path.join(tmp, "export")
        with contextlib.redirect_stdout(sys.stderr):  # export's progress lines; stdout is the table
            export.export(ckpt_path, out, quantize="int8")
        meta = read_meta(out)
        fused_path, fused = ort_optimize(ckpt_path, tmp, enc_cfg)
        peak = measure_peak(n=256 if args.quick else 2048, repeats=3 if args.quick else 5,
                            budget_s=2 if args.quick else 10)

        tok = Tokenizer.from_file(os.path.join(out, meta["tokenizer"]))
        t0 = time.perf_counter()
        seqs = encode_texts(tok, texts)
        tokenize_s = time.perf_counter() - t0
        windows = make_windows(seqs, meta["max_length"] - len(meta["prefix_ids"]) - len(meta["suffix_ids"]))
        owner = windows[0]
        n1 = min(args.batch1_rows, len(texts))
        plans = {32: (make_batches(meta, seqs, windows, 32), len(texts)),
                 1: (make_batches(meta, seqs, windows, 1, n1), n1)}
        variants = [("PyTorch eager fp32", lambda: torch_eager(ckpt)),
                    ("onnxruntime fp32", lambda: ort_call(os.path.join(out, "model.onnx"))),
                    ("onnxruntime fp32 + transformer fusions", lambda: ort_call(fused_path)),
                    ("onnxruntime int8 (dynamic)", lambda: ort_call(os.path.join(out, "model.int8.onnx")))]
        results = []
        for name, make in variants:
            call = make()
            for bs, (batches, n) in plans.items():
                print(f"{name}, batch {bs}: {len(batches)} calls ...", file=sys.stderr, flush=True)
                secs, probs = time_variant(call, batches, owner, n)
                tokens = int(sum(m.sum() for _, _, m in batches))
                windows_n = sum(len(i) for i, _, _ in batches)
                r = {"variant": name, "batch": bs, "rows": n, "windows": windows_n, "real_tokens": tokens,
                     "seconds": secs, "comments_per_s": n / secs, "windows_per_s": windows_n / secs,
                     "real_tokens_per_s": tokens / secs, "mfu_fp32_peak": mfu(params, tokens, secs,
                                                                              peak["fp32_gflops"], training=False)}
                if bs == 32:
                    r["mean_auc"] = evaluate(probs.astype(np.float64), labels)["aucroc_macro"]
                    r["probs"] = probs
                results.append(r)
            del call
    ref = next(r["probs"] for r in results if r["batch"] == 32)  # eager fp32
    for r in results:
        if "probs" in r:
            r["max_abs_diff_vs_eager"] = float(np.abs(r.pop("probs") - ref).max())
    report(args, dev, peak, results, params, fused, tokenize_s, len(texts), len(owner), ckpt_path)


def report(args, dev, peak, results, params, fused, tokenize_s, n_texts, n_windows, ckpt_path):
    def get(name, bs):
        return next(r for r in results if r["variant"] == name and r["batch"] == bs)
    eager32, eager1 = get("PyTorch eager fp32", 32), get("PyTorch eager fp32", 1)
    rows = [[r["variant"], r["batch"], f"{r['rows']:,} / {r['windows']:,}", fmt(r["comments_per_s"], ",.1f"),
             fmt(r["real_tokens_per_s"], ",.0f"), fmt(r["mfu_fp32_peak"], ".1%"), fmt(r.get("mean_auc"), ".4f"),
             fmt(r.get("max_abs_diff_vs_eager"), ".1e"),
             fmt(ratio(r["comments_per_s"], (eager32 if r["batch"] == 32 else eager1)["comments_per_s"]), ".2f", "x")]
            for r in sorted(results, key=lambda r: -r["batch"])]
    table = markdown_table(["variant", "batch", "rows / windows", "comments/s", "real tokens/s", "MFU (fp32 peak)",
                            "mean AUC", "max abs diff vs eager", "vs eager"], rows)
    ort32 = [get(n, 32) for n in ("onnxruntime fp32", "onnxruntime fp32 + transformer fusions")]
    best32 = max(ort32, key=lambda r: r["comments_per_s"])
    opt, plain = ort32[1], ort32[0]
    int8 = get("onnxruntime int8 (dynamic)", 32)
    best1 = max((r for r in results if r["batch"] == 1 and r["variant"] != "PyTorch eager fp32"),
                key=lambda r: r["comments_per_s"])
    auc_gap = abs(int8["mean_auc"] - eager32["mean_auc"])
    speed = lambda r, base: ratio(r["comments_per_s"], base["comments_per_s"])  # noqa: E731
    targets = [target(f"batch 32: best fp32 ({best32['variant']}) >= 1.0x eager", speed(best32, eager32), 1.0,
                      fmt(speed(best32, eager32), ".2f", "x")),
               target("batch 32: best fp32 MFU >= 80% of the fp32 peak", best32["mfu_fp32_peak"], 0.80,
                      fmt(best32["mfu_fp32_peak"], ".1%")),
               target("batch 32: int8 >= 2x eager fp32", speed(int8, eager32), 2.0,
                      fmt(speed(int8, eager32), ".2f", "x")),
               target("batch 32: int8 mean AUC within 0.002 of eager fp32", auc_gap, 0.002, fmt(auc_gap, ".4f"),
                      at_most=True),
               target(f"batch 1: best onnxruntime ({best1['variant']}) >= 3x eager", speed(best1, eager1), 3.0,
                      fmt(speed(best1, eager1), ".2f", "x"))]
    pays = speed(opt, plain)
    what = "data/sample/train.csv" if args.quick else "../shared/data/jigsaw/train.csv"
    ckpt_name = "tiny random BERT" if args.quick and not args.checkpoint else args.checkpoint or "runs/mini/best.pt"
    notes = [f"Machine: {describe(dev)}; onnxruntime intra-op threads {physical_cores()}.", *peak_lines(peak),
             f"Checkpoint: {ckpt_name}; "
             f"{params:,} non-embedding parameters; MFU = 2 x params x real tokens / time / fp32 peak "
             f"(int8 does integer work, so its MFU only compares speed).",
             f"Rows: the first {n_texts:,} of the validation split (split_indices 0.1, seed 1234) of {what}: "
             f"{n_windows:,} windows; tokenizing them took {tokenize_s:.2f} s (same for every variant, not counted).",
             f"Transformer fusions, on an export with eager attention (sdpa's graph only gets LayerNorm/GELU fused): "
             f"{', '.join(f'{k} {v}' for k, v in fused.items()) or 'none matched'}; "
             f"{fmt(pays, '.2f', 'x')} plain onnxruntime fp32 at batch 32 - "
             f"{'they pay' if pays and pays > 1.03 else 'they do not pay here'}.",
             "int8 activations are quantized per batch, so its scores move slightly with the batch."]
    if not args.quick:
        notes.append(SHARED_NOTE + ".")
    md = "\n".join([f"## Inference speed ({'quick' if args.quick else 'full'})", "", table, "",
                    targets_table(targets), "", *[f"- {n}" for n in notes]])
    write_results("predict_speed", md, {"machine": dev, "peak": peak, "params_non_embedding": params,
                                        "fused_ops": fused, "tokenize_seconds": tokenize_s, "variants": results,
                                        "targets": targets, "notes": notes}, args.out, args.quick)


if __name__ == "__main__":
    main_guard(run)
