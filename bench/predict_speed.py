"""Inference speed on CPU: every runtime predict.py can pick, against PyTorch eager fp32 and bf16.

    python bench/predict_speed.py                                  # runs/mini/best.pt (< 10 min on 2 cores)
    python bench/predict_speed.py --checkpoint runs/mini_average/best.pt
    python bench/predict_speed.py --quick                          # tiny random model (CI, seconds)

Rows: the first 2,000 rows of the validation split the mini configs use (split_indices(labels, 0.1,
1234) on ../shared/data/jigsaw/train.csv). The checkpoint is exported into a temporary folder with
export.py (fp32 + int8; its graph is written once more with eager attention for onnxruntime.transformers'
fusions, which do not match sdpa's graph: see ort_optimize). Every variant scores the same windows in predict.py's
batches (tokenized whole, cut into max_length windows, sorted by length, at most 32 windows and
scoring.MAX_TOKENS padded tokens a call), and at batch 1 (the first --batch1_rows rows: one window per
call is slow for eager PyTorch). Only the model calls are timed: tokenizing is the same for all and
reported once. The row "predict.py's choice" is scoring.load_model(auto) + scoring.score_texts, timed whole
(tokenizing included), as predict.py runs it. Each variant runs in a fresh process, so its peak RSS is its
own. Each comment's probabilities are the max over its windows; mean AUC over the checkpoint's labels. Threads: the
physical cores for every runtime. Writes bench/results/predict_speed.json.
"""
import argparse
import contextlib
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (ROOT, SAMPLE, SHARED_NOTE, SHARED_TRAIN, BenchError, add_common_args, describe, fmt,  # noqa: E402
                    machine, main_guard, markdown_table, measure_peak, mfu, non_embedding_params, peak_lines,
                    peak_rss_mb, physical_cores, ratio, require_checkpoint, run_isolated, run_once, target,
                    targets_table, train_tiny, write_results, write_subset)

WARMUP_CALLS = 3  # first calls allocate and pick kernels; left out of every timing
CHECK_ROWS = 256  # validation rows export.py checks each runtime on: the check is not what is measured here
# `predict.py --file F --out O` as it ran before the token budget (batches of 32 windows whatever their length):
# predict.py's own steps (read_comments, BLOCK comments at a time, Classifier.predict, write_submission), with a
# Classifier whose one pass over the windows has no token budget. Nothing of the project is patched.
# argv: project root, export folder, runtime, input file, submission file.
BEFORE_SCRIPT = """
import os, sys
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as predict.py, before numpy loads
sys.path.insert(0, sys.argv[1])
import numpy as np
from classifier import Classifier, window_span
from data import write_submission
from inputs import blocks, read_comments, valid_unicode
from predict import BLOCK
from scoring import encode_texts, score_windows


class NoTokenBudget(Classifier):
    def score_windows(self, texts, batch_size=32, progress=False):  # Classifier's, with max_tokens unbounded
        texts = [valid_unicode(t)[0] for t in texts]
        seqs, offsets = encode_texts(self.model.tokenizer, texts, offsets=True)
        (owner, start, end), probs = score_windows(self.model, seqs, batch_size, progress, max_tokens=1 << 62)
        bounds = np.searchsorted(owner, np.arange(len(texts) + 1))
        return [(probs[a:b], [window_span(offsets[i], start[j], end[j]) for j in range(a, b)])
                for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]


model_dir, runtime, path, out = sys.argv[2:6]
clf = NoTokenBudget(model_dir, runtime)
_, items = read_comments([], path)
write_submission(out, clf.labels, (([rid for rid, _ in block], [[r["scores"][n] for n in clf.labels] for r in
                                    clf.predict([t for _, t in block])]) for block in blocks(items, BLOCK)))
"""


# ----------------------------------------------------------------------------
# rows, windows, batches


def load_rows(path, n, names):
    """The first n rows of the validation split the mini configs use, labels in names' order -> (texts,
    labels (n, L))."""
    from data import read_csv, split_indices
    ds = read_csv(path, names)
    _, val = split_indices(ds.labels, 0.1, 1234, names)
    rows = val[:n]
    return [ds.texts[i] for i in rows], ds.labels[rows]


def make_batches(meta, seqs, windows, batch_size, n_texts=None):
    """scoring.score_texts' batches: windows sorted by length, at most batch_size windows and scoring.MAX_TOKENS
    padded tokens each -> [(window idx, ids, mask)]. n_texts keeps the windows of the first n_texts comments."""
    import numpy as np

    from data import sorted_batches
    from scoring import MAX_TOKENS, window_batch
    owner, start, end = windows
    keep = np.flatnonzero(owner < (n_texts if n_texts is not None else len(seqs)))
    special = len(meta["prefix_ids"]) + len(meta["suffix_ids"])
    out = []
    for b in sorted_batches((end - start)[keep] + special, batch_size, MAX_TOKENS):
        idx = keep[b]
        ids, mask = window_batch(seqs, windows, idx, meta["prefix_ids"], meta["suffix_ids"], meta["pad_id"])
        out.append((idx, ids, mask))
    return out


def time_variant(call, batches, owner, n_texts, n_labels):
    """Run every batch (warm-up calls first, untimed) -> (seconds, probs (n_texts, n_labels): max over windows)."""
    import numpy as np
    for _, ids, mask in batches[:WARMUP_CALLS]:
        call(ids, mask)
    out = np.zeros((n_texts, n_labels), dtype=np.float32)
    seconds = 0.0
    for idx, ids, mask in batches:
        t0 = time.perf_counter()
        probs = call(ids, mask)
        seconds += time.perf_counter() - t0
        np.maximum.at(out, owner[idx], probs)  # as scoring.score_texts: the max over a comment's windows
    return seconds, out


# ----------------------------------------------------------------------------
# the variants: each a function (ids, mask) -> probs (B, L) numpy


def torch_eager(ckpt_path, export_dir, bf16=False):
    import torch

    from checkpoint import load_checkpoint, model_from_checkpoint
    from export import make_wrapper
    from scoring import read_meta
    # the calibration map and the sigmoid inside, as the ONNX graph has them
    meta = read_meta(export_dir)
    wrapper = make_wrapper(model_from_checkpoint(load_checkpoint(ckpt_path)), meta["calibration"], meta["labels"])
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def call(ids, mask):
        with torch.inference_mode(), autocast:
            return wrapper(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()
    return call


def ort_file(path):
    """onnxruntime on a file outside the export (the fused graph), with predict.py's session options."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = physical_cores(), 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return lambda ids, mask: sess.run(["probs"], {"input_ids": ids, "attention_mask": mask})[0]


def runtime_call(runtime, export_dir):
    """One of predict.py's runtimes, opened as scoring.load_model opens it."""
    from runtimes import open_session
    from scoring import read_meta
    session, _ = open_session(runtime, export_dir, read_meta(export_dir), physical_cores())
    return lambda ids, mask: session.run(["probs"], {"input_ids": ids, "attention_mask": mask})[0]


VARIANTS = [  # name, what runs it, its argument
    ("PyTorch eager fp32", "torch", False),
    ("PyTorch eager bf16 autocast", "torch", True),
    ("onnxruntime fp32", "runtime", "onnxruntime-fp32"),
    ("onnxruntime fp32 + transformer fusions", "fused", None),
    ("onnxruntime int8 (dynamic)", "runtime", "onnxruntime-int8"),
    ("OpenVINO on model.onnx", "runtime", "openvino"),
    ("predict.py's choice", "choice", None),
]


def measure_variant(kind, arg, export_dir, fused_path, ckpt_path, texts, n1):
    """In a fresh process: one variant at batch 32 and batch 1 -> its rows, batch 32's probabilities, peak RSS."""
    import numpy as np
    from tokenizers import Tokenizer

    import scoring
    if kind == "torch":  # only there: torch's own memory is not the other runtimes' peak RSS
        import torch
        torch.set_num_threads(physical_cores())
    meta = scoring.read_meta(export_dir)
    seqs = scoring.encode_texts(Tokenizer.from_file(os.path.join(export_dir, meta["tokenizer"])), texts)
    windows = scoring.make_windows(seqs, meta["max_length"] - len(meta["prefix_ids"]) - len(meta["suffix_ids"]))
    plans = {32: (make_batches(meta, seqs, windows, 32), len(texts)), 1: (make_batches(meta, seqs, windows, 1, n1), n1)}
    out = {"rows": {}, "runtime": None}
    if kind == "choice":  # predict.py's own path, tokenizing included
        model = scoring.load_model(export_dir, "auto")
        out["runtime"] = model.runtime
        for bs, (batches, n) in plans.items():
            scoring.score_texts(model, texts[:WARMUP_CALLS], bs, progress=False)
            t0 = time.perf_counter()
            probs = scoring.score_texts(model, texts[:n], bs, progress=False)
            out["rows"][bs] = (time.perf_counter() - t0, probs)
    else:
        call = {"torch": lambda: torch_eager(ckpt_path, export_dir, arg), "runtime": lambda: runtime_call(arg, export_dir),
                "fused": lambda: ort_file(fused_path)}[kind]()
        for bs, (batches, n) in plans.items():
            out["rows"][bs] = time_variant(call, batches, windows[0], n, len(meta["labels"]))
    out["tokens"] = {bs: int(sum(m.sum() for _, _, m in batches)) for bs, (batches, _) in plans.items()}
    out["windows"] = {bs: sum(len(i) for i, _, _ in batches) for bs, (batches, _) in plans.items()}
    out["peak_rss_mb"] = peak_rss_mb()
    out["rows"] = {bs: (secs, np.asarray(probs)) for bs, (secs, probs) in out["rows"].items()}
    return out


def export_quietly(ckpt_path, out):
    import export
    with contextlib.redirect_stdout(sys.stderr):  # export's progress lines; stdout is the table
        export.export(ckpt_path, out, quantize="int8", check_rows=CHECK_ROWS)


def score_files(args, data, export_dir, tmp):
    """`predict.py --file ROWS.csv --out` as a user runs it, on each runtime, and as it was before the token
    budget (batches of 32 windows whatever their length) -> [{variant, wall_s, comments_per_s, peak_rss_mb}]."""
    from runtimes import installed
    csv_path = os.path.join(tmp, "rows.csv")
    n = write_subset(data, args.file_rows, csv_path)
    scores = os.path.join(tmp, "scores.csv")
    base = ["--model", export_dir, "--file", csv_path, "--out", scores]
    predict = [sys.executable, os.path.join(ROOT, "predict.py")]
    runs = [("predict.py --file (default: auto)", predict + base)]
    runs += [(f"predict.py --file --runtime {r}", predict + base + ["--runtime", r])
             for r in ("openvino", "onnxruntime-int8", "onnxruntime-fp32") if r != "openvino" or installed(r)]
    runs += [("as before: onnxruntime int8, batches of 32 windows, no token budget",
              [sys.executable, "-c", BEFORE_SCRIPT, ROOT, export_dir, "onnxruntime-int8", csv_path, scores])]
    out = []
    for name, cmd in runs:
        print(f"{name}: {n:,} rows ...", file=sys.stderr, flush=True)
        wall, rss, _ = run_once(cmd, ROOT)
        out.append({"variant": name, "rows": n, "wall_s": wall, "comments_per_s": n / wall, "peak_rss_mb": rss})
    return out


def ort_optimize(ckpt_path, export_dir, tmp, enc_cfg):
    """onnxruntime.transformers' BERT fusions (attention, LayerNorm, GELU) -> (model path, {fused op: count}).

    They match the attention pattern of transformers' eager attention, not sdpa's (export.py's
    default): on an sdpa export only LayerNorm and GELU fuse, and it runs no faster. So the checkpoint's
    graph is written once more with eager attention, by export.py's own pieces (make_wrapper with the
    export's calibration, write_onnx, then checks.check_parity against PyTorch, as export.py checks it), and
    optimized. Nothing of the project is patched: the eager attention is set on this model only."""
    import logging

    from onnxruntime.transformers.optimizer import optimize_model
    from tokenizers import Tokenizer

    from checkpoint import load_checkpoint, model_from_checkpoint
    from checks import check_parity, parity_batches
    from export import make_wrapper, write_onnx
    from scoring import read_meta
    meta = read_meta(export_dir)
    model = model_from_checkpoint(load_checkpoint(ckpt_path))
    model.encoder.set_attn_implementation("eager")
    wrapper = make_wrapper(model, meta["calibration"], meta["labels"])
    batches = parity_batches(Tokenizer.from_file(os.path.join(export_dir, meta["tokenizer"])), meta["max_length"],
                             meta["prefix_ids"], meta["suffix_ids"], meta["pad_id"])
    src, dst = os.path.join(tmp, "model.eager.onnx"), os.path.join(tmp, "model.opt.onnx")
    write_onnx(wrapper, *batches[0], src)
    with contextlib.redirect_stdout(sys.stderr):  # its parity line; stdout is the table
        check_parity(wrapper, src, batches, ckpt_path, src)
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)  # fusion chatter
    opt = optimize_model(src, model_type="bert", num_heads=enc_cfg["num_attention_heads"],
                         hidden_size=enc_cfg["hidden_size"])
    opt.save_model_to_file(dst)
    return dst, {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


# ----------------------------------------------------------------------------


def run(argv=None):
    p = argparse.ArgumentParser(description="Inference speed: predict.py's runtimes against PyTorch eager.")
    add_common_args(p)
    p.add_argument("--checkpoint", help="a checkpoint written by train.py (default runs/mini/best.pt)")
    p.add_argument("--rows", type=int, default=2000, help="validation rows scored at batch 32 (default 2000)")
    p.add_argument("--batch1_rows", type=int, default=300, help="of those, scored at batch 1 (default 300)")
    p.add_argument("--file_rows", type=int, default=5000, help="random real rows scored by predict.py --file "
                                                                "--out on each runtime (default 5000)")
    args = p.parse_args(argv)
    if min(args.rows, args.batch1_rows, args.file_rows) < 1:  # every figure is per row
        raise BenchError(f"--rows, --batch1_rows and --file_rows must be >= 1, got {args.rows}, {args.batch1_rows} "
                         f"and {args.file_rows}")
    data = SAMPLE if args.quick else SHARED_TRAIN
    if args.checkpoint or not args.quick:  # the checkpoint first: it is what a user names on the command line
        require_checkpoint(args.checkpoint or os.path.join(ROOT, "runs", "mini", "best.pt"))
    if args.quick:
        args.rows, args.batch1_rows, args.file_rows = 64, 16, 100
    elif not os.path.isfile(data):
        raise BenchError(f"{data}: not found; the real rows live in ../shared (see its README), or use --quick")

    import numpy as np
    import torch
    from tokenizers import Tokenizer

    from checkpoint import load_checkpoint, model_from_checkpoint
    from metrics import compute_metrics
    from runtimes import cpu_flags, installed
    from scoring import encode_texts, read_meta
    dev = machine()
    bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    with tempfile.TemporaryDirectory(prefix="predict_speed-") as tmp:
        ckpt_path = args.checkpoint or os.path.join(ROOT, "runs", "mini", "best.pt")
        if args.quick and not args.checkpoint:
            ckpt_path = train_tiny(tmp)
        ckpt = load_checkpoint(ckpt_path)  # a bad file fails here, in seconds
        names = ckpt["model_config"]["labels"]  # the model's outputs, in its order
        texts, labels = load_rows(data, args.rows, names)
        n1 = min(args.batch1_rows, len(texts))
        params = non_embedding_params(model_from_checkpoint(ckpt))
        peak = measure_peak(n=256 if args.quick else 2048, repeats=3 if args.quick else 5,
                            budget_s=2 if args.quick else 10)
        out = os.path.join(tmp, "export")
        run_isolated(export_quietly, ckpt_path, out)  # OpenVINO, checked in there, pins its process's threads
        meta = read_meta(out)
        fused_path, fused = run_isolated(ort_optimize, ckpt_path, out, tmp, ckpt["model_config"]["encoder_config"])
        tok = Tokenizer.from_file(os.path.join(out, meta["tokenizer"]))
        t0 = time.perf_counter()
        encode_texts(tok, texts)
        tokenize_s = time.perf_counter() - t0
        results, ref = [], None
        for name, kind, arg in VARIANTS:
            skip = ("n/a (no native bf16 on this CPU)" if kind == "torch" and arg and not bf16 else
                    "n/a (openvino is not installed)" if arg == "openvino" and not installed("openvino") else None)
            if skip:
                results.append({"variant": name, "skipped": skip})
                continue
            print(f"{name} ...", file=sys.stderr, flush=True)
            m = run_isolated(measure_variant, kind, arg, out, fused_path, ckpt_path, texts, n1)
            label = f"{name} ({m['runtime']})" if m["runtime"] else name
            for bs, (secs, probs) in m["rows"].items():
                n, tokens = (len(texts), m["tokens"][32]) if bs == 32 else (n1, m["tokens"][1])
                r = {"variant": label, "batch": bs, "rows": n, "windows": m["windows"][bs], "real_tokens": tokens,
                     "seconds": secs, "comments_per_s": n / secs, "real_tokens_per_s": tokens / secs,
                     "mfu_fp32_peak": mfu(params, tokens, secs, peak["fp32_gflops"], training=False),
                     "mfu_bf16_peak": mfu(params, tokens, secs, peak.get("bf16_gflops"), training=False),
                     "peak_rss_mb": m["peak_rss_mb"], "choice": kind == "choice"}
                if bs == 32:
                    r["mean_auc"] = compute_metrics(probs.astype(np.float64), labels, names)["aucroc_macro"]
                    ref = probs if ref is None else ref  # eager fp32, the first variant
                    r["max_abs_diff_vs_eager"] = float(np.abs(probs - ref).max())
                results.append(r)
        files = score_files(args, data, out, tmp)
    report(args, dev, peak, results, params, fused, tokenize_s, len(texts), ckpt_path, sorted(cpu_flags()), files)


def report(args, dev, peak, results, params, fused, tokenize_s, n_texts, ckpt_path, flags, files):
    measured = [r for r in results if "skipped" not in r]
    base = {bs: next(r for r in measured if r["variant"] == "PyTorch eager fp32" and r["batch"] == bs)
            for bs in (32, 1)}
    speed = lambda r: ratio(r["comments_per_s"], base[r["batch"]]["comments_per_s"])  # noqa: E731
    rows = [[r["variant"], r["batch"], f"{r['rows']:,} / {r['windows']:,}", fmt(r["comments_per_s"], ",.1f"),
             fmt(r["mfu_fp32_peak"], ".1%"), fmt(r["mfu_bf16_peak"], ".1%"), fmt(r.get("mean_auc"), ".4f"),
             fmt(r.get("max_abs_diff_vs_eager"), ".1e"), fmt(r["peak_rss_mb"], ",.0f"), fmt(speed(r), ".2f", "x")]
            for r in sorted(measured, key=lambda r: -r["batch"])]
    rows += [[r["variant"], "-", "-", r["skipped"], "", "", "", "", "", ""] for r in results if "skipped" in r]
    table = markdown_table(["variant", "batch", "rows / windows", "comments/s", "MFU (fp32 peak)", "MFU (bf16 peak)",
                            "mean AUC", "max abs diff vs eager", "peak RSS MB", "vs eager fp32"], rows)
    b32 = [r for r in measured if r["batch"] == 32]
    choice = next(r for r in b32 if r["choice"])
    fastest = max((r for r in b32 if not r["choice"]), key=lambda r: r["comments_per_s"])
    worst_gap = max(abs(r["mean_auc"] - base[32]["mean_auc"]) for r in b32)
    bf16_cpu = any(f in flags for f in ("amx_bf16", "avx512_bf16"))
    goal = 2.5 if bf16_cpu else 1.5
    targets = [target(f"batch 32: predict.py's choice within 10% of the fastest ({fastest['variant']})",
                      ratio(choice["comments_per_s"], fastest["comments_per_s"]), 0.9,
                      fmt(ratio(choice["comments_per_s"], fastest["comments_per_s"]), ".2f", "x")),
               target(f"batch 32: predict.py's choice >= {goal}x PyTorch eager fp32 "
                      f"({'native bf16' if bf16_cpu else 'no native bf16'} CPU)", speed(choice), goal,
                      fmt(speed(choice), ".2f", "x")),
               target("batch 32: every variant's mean AUC within 0.002 of eager fp32", worst_gap, 0.002,
                      fmt(worst_gap, ".4f"), at_most=True)]
    default, before = files[0], files[-1]
    targets += [target(f"--file {default['rows']:,} rows: default's peak RSS <= 600 MB", default["peak_rss_mb"], 600,
                       fmt(default["peak_rss_mb"], ",.0f", " MB"), at_most=True),
                target("--file: default's comments/s >= before the token budget", ratio(default["comments_per_s"],
                       before["comments_per_s"]), 1.0, fmt(ratio(default["comments_per_s"], before["comments_per_s"]),
                                                           ".2f", "x"))]
    file_table = markdown_table(["command", "rows", "wall", "comments/s", "peak RSS MB", "vs before"], [
        [f["variant"], f"{f['rows']:,}", fmt(f["wall_s"], ".1f", " s"), fmt(f["comments_per_s"], ",.1f"),
         fmt(f["peak_rss_mb"], ",.0f"), fmt(ratio(f["comments_per_s"], before["comments_per_s"]), ".2f", "x")]
        for f in files])
    what = "data/sample/train.csv" if args.quick else "../shared/data/jigsaw/train.csv"
    ckpt_name = "tiny random BERT" if args.quick and not args.checkpoint else args.checkpoint or "runs/mini/best.pt"
    notes = [f"Machine: {describe(dev)}; threads {physical_cores()} for every runtime.", *peak_lines(peak),
             f"Checkpoint: {ckpt_name}; {params:,} non-embedding parameters; MFU = 2 x params x real tokens / time "
             f"/ peak (int8 does integer work, so its MFU only compares speed).",
             f"Rows: the first {n_texts:,} of the validation split (split_indices 0.1, seed 1234) of {what}; "
             f"tokenizing them took {tokenize_s:.2f} s, counted in the predict.py's choice row only.",
             f"Transformer fusions, on the checkpoint's graph written again with eager attention: "
             f"{', '.join(f'{k} {v}' for k, v in fused.items()) or 'none matched'}.",
             "int8 activations are quantized per batch, so its scores move slightly with the batch."]
    if not args.quick:
        notes.append(SHARED_NOTE + ".")
    notes.append(f"Files: predict.py --file --out on {files[0]['rows']:,} random rows (seed 0) of {what}, one "
                 f"process each, wall from spawn to exit (tokenizing, reading and writing included).")
    md = "\n".join([f"## Inference speed ({'quick' if args.quick else 'full'})", "", table, "", file_table, "",
                    targets_table(targets), "", *[f"- {n}" for n in notes]])
    write_results("predict_speed", md, {"machine": dev, "peak": peak, "params_non_embedding": params,
                                        "fused_ops": fused, "tokenize_seconds": tokenize_s, "variants": results,
                                        "files": files, "targets": targets, "notes": notes}, args.out, args.quick)


if __name__ == "__main__":
    main_guard(run)
