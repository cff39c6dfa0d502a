"""Training throughput on one GPU (an H100/H200 in mind): bert-base-sized encoder, train.py's own step and loop.

    python bench/gpu_step.py                    # CUDA: bert-base (random init), batch 32 and 128 (about 5 min on an H200)
    python bench/gpu_step.py --steps 300        # longer measurements (default 100 per variant)
    python bench/gpu_step.py --quick            # CPU, tiny random BERT, a few steps: keeps it working (CI)

The encoder is BertConfig's defaults (12 layers, hidden 768, random init), saved to a temporary folder with the
MiniLM tokenizer files. Each variant runs what train.py runs, minus evaluation: train.build_training (model,
fused AdamW, GradScaler, autocast), data.micro_batches (length grouping, pad_multiple's widths) on a token table
whose lengths follow the real data (LENGTH_QUANTILES; ids and labels random), device.on_device (pinned copies),
and per step the lr, seed_step, train.train_step and the loss and bad-step flags kept on the device, with
device.agree, the loop's one sync, every log_every (50) steps. Warm-up steps (compilation included) come
first, then >= 100 measured steps, torch.cuda.synchronize around them. Variants, each a fresh model:
  1. fp32 (TF32 off), batch 32, every batch padded to max_length, eager
  2. bf16 autocast + TF32, batch 32 (the configs' batch until 2026-12-02), length-grouped, eager
  3. as 2, torch.compile on widths bucketed to multiples of 64
  4. bf16 autocast + TF32, batch 128 (configs/base.json now), length-grouped, eager
  5. as 4, torch.compile on bucketed widths: configs/base.json as it trains     (--quick: backend "eager")
MFU = 6 x non-embedding params x real tokens / time, against the spec's dense bf16 peak (989 TFLOP/s for H100
and H200 SXM, 312 for A100) and against the measured bf16 matmul peak (8192^2). Graphs compiled are counted
(dynamo's unique_graphs) in the warm-up and in the measured steps (should be 0). Results are written after every
variant (bench/results/gpu_step.json and .md), a failing variant recorded with its error, and the next run.
"""
import argparse
import os
import sys
import tempfile
import time
from contextlib import redirect_stdout

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (LABELS, BenchError, add_common_args, describe, encoder_folder, fmt, machine,  # noqa: E402
                    main_guard, markdown_table, count_params, measure_peak, mfu, peak_lines, ratio, target,
                    targets_table, tiny_encoder, write_results)

# Percentiles 0, 2, ..., 100 of the token counts of the 44,073 comments of ../shared/data/jigsaw/train.csv,
# MiniLM tokenizer (bert-base-uncased's WordPiece vocabulary), max_length 256, [CLS] and [SEP] included:
# mean 75.1 tokens, median 49, 6.5% truncated at 256. Numbers only, computed once with data.tokenize.
LENGTH_QUANTILES = [4, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 24, 25, 27, 28, 30, 32, 34, 36, 37, 39, 42, 44,
                    46, 49, 51, 54, 57, 60, 63, 66, 70, 74, 79, 83, 89, 95, 102, 109, 118, 129, 141, 156, 173,
                    197, 228, 256, 256, 256, 256]
VARIANTS = [  # name, precision, batch, length grouping, torch.compile (widths bucketed to 64 with it)
    ("1. fp32, batch 32, pad to max_length", "fp32", 32, False, False),
    ("2. bf16 + TF32, batch 32, length grouping", "bf16", 32, True, False),
    ("3. as 2 + compile, bucketed widths", "bf16", 32, True, True),
    ("4. bf16 + TF32, batch 128, length grouping", "bf16", 128, True, False),
    ("5. as 4 + compile, bucketed widths (base.json)", "bf16", 128, True, True),
]
SPEC_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, no sparsity; SXM parts
LOG_EVERY, BUCKET = 50, 64  # configs/base.json's log_every and pad_multiple


def spec_peak_gflops(gpu_name):
    return next((t * 1e3 for k, t in SPEC_BF16_TFLOPS.items() if k in (gpu_name or "")), None)


# ----------------------------------------------------------------------------
# encoder and batches


def bert_base_encoder(path):
    """BertConfig() defaults, random init, with the MiniLM tokenizer files beside it (any encoder folder
    train.py takes has them)."""
    from transformers import BertConfig
    return encoder_folder(path, BertConfig())


def draw_lengths(n, max_length, rng):
    """Lengths following the real distribution: inverse CDF through LENGTH_QUANTILES."""
    import numpy as np
    u = rng.random(n) * (len(LENGTH_QUANTILES) - 1)
    return np.clip(np.rint(np.interp(u, np.arange(len(LENGTH_QUANTILES)), LENGTH_QUANTILES)), 2, max_length).astype(int)


def token_table(n, max_length, batch, seed=0, vocab=30522):
    """data.TrainData of n rows: random ids ([CLS] .. [SEP]) at the real lengths, labels at about Kaggle's rate."""
    import numpy as np

    from data import Dataset, TrainData
    rng = np.random.default_rng(seed)
    lengths = draw_lengths(n, max_length, rng)
    seqs = [np.concatenate([[101], rng.integers(1000, vocab, k - 2), [102]]).astype(np.int32) for k in lengths]
    ds = Dataset([str(i) for i in range(n)], [""] * n, (rng.random((n, len(LABELS))) < 0.1).astype(np.uint8))
    return TrainData(ds, np.arange(n), np.arange(0), seqs, seqs, lengths, 0, n // batch)


# ----------------------------------------------------------------------------
# one variant: train.py's loop, without evaluation


def run_variant(variant, encoder, device, args, params, peaks, prof=None):
    """-> the variant's figures. prof: a torch.profiler.profile on a schedule, stepped after every step."""
    import torch
    import torch._dynamo

    import train
    from config import Config
    from data import micro_batches
    from device import agree, on_device
    from optim import get_lr
    name, precision, batch, grouped, compiled = variant
    batch = batch if not args.quick else batch // 8
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    total = args.warmup + args.steps
    cfg = Config(encoder=encoder, batch_size=batch, max_length=args.max_length, lr=6e-5, head_lr=2e-4,
                 warmup_steps=total // 10, precision=precision, group_by_length=grouped, pad_to_max_length=not grouped,
                 pad_multiple=BUCKET if compiled else 0, compile=compiled, device=device.type)
    data = token_table(batch * max(64, total), args.max_length, batch)
    raw, optimizer, scaler, autocast, pos_weight = train.build_training(cfg, data, precision, device)
    model = raw
    torch._dynamo.reset()
    if compiled:  # as train.py: static shapes, one graph per bucketed width
        model = torch.compile(raw, dynamic=False, **({"backend": "eager"} if args.quick else {}))
    batches = on_device(micro_batches(data, cfg, 0, 1, 0), device)
    loss_sum, pending = torch.zeros((), device=device), []
    raw.train()

    def step(s):  # train.py's loop body around train_step
        for g in optimizer.param_groups:
            g["lr"] = g["peak_lr"] * get_lr(s, total, cfg.warmup_steps)
        train.seed_step(cfg, 0, s)
        loss, bad, real, padded = train.train_step(model, raw, batches, optimizer, scaler, autocast, pos_weight, 1,
                                                   cfg.grad_clip, skip_nonfinite=precision != "fp16")
        loss_sum.add_(torch.where(bad, 0.0, loss))
        pending.append(bad)
        if (s + 1) % LOG_EVERY == 0:
            agree([0.0, 0.0, float(total)], loss_sum, pending, 0, 1)
            pending.clear()
            loss_sum.zero_()
        if prof is not None:
            prof.step()
        return real, padded

    def sync():
        if cuda:
            torch.cuda.synchronize(device)
    graphs = lambda: torch._dynamo.utils.counters["stats"]["unique_graphs"]  # noqa: E731
    sync()
    t0 = time.perf_counter()
    for s in range(args.warmup):
        step(s)
    sync()
    warm_s, warm_graphs = time.perf_counter() - t0, graphs()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    real = padded = 0
    t0 = time.perf_counter()
    for s in range(args.warmup, total):
        r, p = step(s)
        real, padded = real + r, padded + p
    sync()
    secs = time.perf_counter() - t0
    spec = spec_peak_gflops(peaks.get("gpu"))
    return {"variant": name, "precision": precision, "batch_size": batch, "length_grouping": grouped,
            "compile": compiled, "pad_multiple": cfg.pad_multiple, "fused_adamw": True, "warmup_seconds": warm_s,
            "seconds": secs, "step_ms": 1e3 * secs / args.steps, "samples_per_s": args.steps * batch / secs,
            "real_tokens_per_s": real / secs, "padding_fraction": 1 - real / padded,
            "graphs_warmup": warm_graphs, "graphs_measured": graphs() - warm_graphs,
            "mfu_spec_peak": mfu(params, real, secs, spec, training=True),
            "mfu_measured_peak": mfu(params, real, secs, peaks["bf16_gflops"], training=True),
            "peak_gpu_mem_gb": torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None}


# ----------------------------------------------------------------------------


def gpu_args(p, argv, steps_help, script):
    """The flags gpu_step.py and gpu_profile.py share, parsed and checked -> (args, device): the GPU, or the
    CPU under --quick (a tiny run, for CI)."""
    add_common_args(p)
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--steps", type=int, default=steps_help[0], help=steps_help[1])
    p.add_argument("--warmup", type=int, default=30, help="steps run first, compilation included (default 30)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:  # every figure is per measured step
        raise BenchError("--steps must be >= 1, and --warmup >= 0")
    import torch
    if args.quick:
        args.max_length, args.steps, args.warmup = 64, 2, 1
        return args, torch.device("cpu")
    if not torch.cuda.is_available():
        raise BenchError(f"no CUDA GPU here: {script} (use --quick to check it on CPU)")
    return args, torch.device("cuda")


def run(argv=None):
    p = argparse.ArgumentParser(description="GPU training throughput: train.py's step and loop, batch 32 and 128.")
    args, device = gpu_args(p, argv, (100, "measured optimizer steps per variant (default 100)"),
                            "gpu_step.py measures a GPU")
    import torch
    dev = machine(device)
    peak = measure_peak(device, n=256 if args.quick else 8192, repeats=3 if args.quick else 5,
                        budget_s=2 if args.quick else 30)
    peak["gpu"] = dev.get("gpu")
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu_step-") as tmp:
        encoder = (tiny_encoder(os.path.join(tmp, "tiny")) if args.quick
                   else bert_base_encoder(os.path.join(tmp, "bert")))
        params = count_params(encoder)
        for v in VARIANTS:
            print(f"{v[0]}: {args.warmup} + {args.steps} steps ...", file=sys.stderr, flush=True)
            try:
                results.append(run_variant(v, encoder, device, args, params, peak))
            except Exception as e:  # noqa: BLE001 - one GPU session: record it, measure the others
                if args.quick:
                    raise
                results.append({"variant": v[0], "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the next variant starts from an empty cache
            with redirect_stdout(sys.stderr):  # each variant's result on disk as it finishes
                report(args, dev, peak, results, params)
    report(args, dev, peak, results, params)


def report(args, dev, peak, results, params):
    ok = [r for r in results if "error" not in r]
    base = ok[0]["samples_per_s"] if ok else None
    rows = [[r["variant"], *(["failed: " + r["error"]] + [""] * 8 if "error" in r else [
             fmt(r["samples_per_s"], ",.1f"), fmt(r["step_ms"], ",.1f"), fmt(r["real_tokens_per_s"], ",.0f"),
             fmt(r["padding_fraction"], ".0%"), fmt(r["mfu_spec_peak"], ".1%"), fmt(r["mfu_measured_peak"], ".1%"),
             f"{r['graphs_warmup']} / {r['graphs_measured']}", fmt(r["warmup_seconds"], ".1f", " s"),
             fmt(ratio(r["samples_per_s"], base), ".2f", "x")])] for r in results]
    table = markdown_table(["variant", "samples/s", "ms/step", "real tokens/s", "padding", "MFU (spec peak)",
                            "MFU (measured peak)", "graphs warm-up / measured", f"{args.warmup} warm-up steps",
                            "vs 1"], rows)
    best = max(ok, key=lambda r: r["samples_per_s"]) if ok else {"variant": "none", "mfu_spec_peak": None}
    spec = spec_peak_gflops(peak.get("gpu"))
    targets = [target(f"best variant ({best['variant']}) MFU >= 40% of the spec bf16 peak", best["mfu_spec_peak"],
                      0.40, fmt(best["mfu_spec_peak"], ".1%"))]
    notes = [f"Machine: {describe(dev)}.", *peak_lines(peak),
             f"Spec dense bf16 peak: {f'{spec / 1e3:,.0f} TFLOP/s' if spec else 'unknown for this chip'}"
             " (H100/H200 SXM 989, A100 312).",
             f"Model: {'tiny random BERT (--quick)' if args.quick else 'bert-base-sized (BertConfig(), random init)'}"
             f" + model.py's head, {params:,} non-embedding parameters; max_length {args.max_length}; "
             f"{args.warmup} warm-up + {args.steps} measured steps per variant; fused AdamW in all.",
             "Lengths drawn from the real distribution (../shared/data/jigsaw/train.csv, mean 75 tokens at "
             "max_length 256); token ids and labels random."
             + (" Quick: batches 4 and 16, compile backend eager (no code generated, says nothing of speed)."
                if args.quick else "")]
    md = "\n".join([f"## GPU training step ({'quick, CPU' if args.quick else 'full'})", "", table, "",
                    targets_table(targets), "", *[f"- {n}" for n in notes]])
    write_results("gpu_step", md, {"machine": dev, "peak": peak, "spec_bf16_gflops": spec,
                                   "params_non_embedding": params, "max_length": args.max_length,
                                   "warmup_steps": args.warmup, "measured_steps": args.steps, "variants": results,
                                   "targets": targets, "notes": notes}, args.out, args.quick)


if __name__ == "__main__":
    main_guard(run)
