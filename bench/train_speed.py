"""Training speed on CPU: the naive loop against dynamic padding with length grouping, bf16, the allocator, compile.

    python bench/train_speed.py                  # MiniLM-L6, 2,000 real rows, max_length 256 (< 10 min, 2 cores)
    python bench/train_speed.py --steps 30       # more measured steps: less sampling noise, longer
    python bench/train_speed.py --quick          # tiny random BERT on data/sample (CI, seconds)

Each variant times train.train_step itself (the project's own step, on the data, model and optimizer
train.py builds; configs/mini.json's hyper-parameters but dropout 0.1 and head truncation at every
evaluation too, as when these figures were first measured; the mini configs now train without dropout,
which is faster again on a CPU: see docs/experiments.md) in a fresh process, so peak RSS is its own, for
warm-up + measured optimizer steps; the warm-up steps and the final validation are left out of the
figures. Variants:
  (a) pad every batch to max_length, random batches (pad_to_max_length true, group_by_length false)
  (b) dynamic padding + length grouping, fp32
  (c) as (b) with bf16 autocast: "n/a" on CPUs without native bf16 (AVX2 emulates it ~400x slower)
  (c1) as (c), the step as it was when issue 28 was filed: malloc's 128 KiB mmap threshold, torch's for-loop
       AdamW, and oneDNN's kernel caches at their defaults. Its attention is not put back on SDPA's fused
       kernel (nothing of the project is patched): at this bench's dropout 0.1 SDPA takes its math path on a
       CPU anyway (attention dropout), so the filed step and (c) both ran the math path; the kernel only
       matters at dropout 0 (the mini configs)
  (c2) as (c) with glibc's malloc untuned; (c3) with jemalloc preloaded, where the machine has a libjemalloc;
  (c4) with oneDNN's kernel caches at their defaults (train.py caps them at 16 entries)
  (d) as (c) with torch.compile (the config's `compile` key, as train.py compiles)
A second table gives (c) to (d) as the kernel sees them over the measured steps: user and sys CPU seconds,
minor page faults, and peak RSS before the validation pass, with ratios to (c).
The validation AUC is one pass after the last step, so a faster variant cannot hide a worse model.
Writes bench/results/train_speed.json and .md.
"""
import argparse
import os
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (ROOT, SAMPLE, SHARED_NOTE, SHARED_TRAIN, BenchError, add_common_args, count_params,  # noqa: E402
                    describe, fmt, machine, main_guard, markdown_table, measure_peak, mfu, peak_lines,
                    peak_rss_mb, physical_cores, ratio, run_isolated, target, targets_table, tiny_encoder,
                    write_results, write_subset)

GROUPED_BF16 = {"pad_to_max_length": "false", "group_by_length": "true", "precision": "bf16"}
VARIANTS = [  # name, config overrides, allocator ("train.py": its own settings; the others for comparison)
    ("(a) pad to max_length, random batches", {"pad_to_max_length": "true", "group_by_length": "false",
                                               "precision": "fp32"}, "train.py"),
    ("(b) dynamic padding + length grouping, fp32", {"pad_to_max_length": "false", "group_by_length": "true",
                                                     "precision": "fp32"}, "train.py"),
    ("(c) as (b), bf16 autocast", GROUPED_BF16, "train.py"),
    ("(c1) as (c), the step when issue 28 was filed (128 KiB mmap threshold, for-loop AdamW, default kernel "
     "caches; attention on SDPA's math path as in (c): at dropout 0.1 the filed step took it too)", GROUPED_BF16,
     "issue-28-filed"),
    ("(c2) as (c), glibc malloc untuned", GROUPED_BF16, "glibc"),
    ("(c3) as (c), jemalloc preloaded", GROUPED_BF16, "jemalloc"),
    ("(c4) as (c), oneDNN's kernel caches at their default 1,024 entries", GROUPED_BF16, "default-caches"),
    ("(d) as (c), torch.compile", {**GROUPED_BF16, "compile": "true"}, "train.py"),
]


def set_allocator(allocator):
    """In the variant's own process, before it allocates: train.py's malloc settings, or what it is compared
    with (jemalloc comes in through LD_PRELOAD at spawn: nothing to do here). run_variant gives "issue-28-filed"
    the for-loop AdamW.

    Nothing of the project is patched here. The filed step's fused attention kernel is not put back: this bench
    trains at dropout 0.1, and with attention dropout SDPA takes its math path on a CPU anyway, so the filed
    step and today's both ran the math path here (model.math_attention only changes the kernel at dropout 0)."""
    import ctypes

    from device import cap_kernel_caches, limit_heap_growth
    if allocator in ("default-caches", "issue-28-filed"):  # set before train.py's cap, a value wins over it
        os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = os.environ["LRU_CACHE_CAPACITY"] = "1024"
    if allocator != "issue-28-filed":  # the kernel caches as train.py caps them: (c2), (c3) differ in malloc only
        cap_kernel_caches()
    if allocator in ("train.py", "default-caches"):
        limit_heap_growth()
    elif allocator == "issue-28-filed":
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 17)  # M_MMAP_THRESHOLD: what train.py set before issue 28


def jemalloc_path():
    """A libjemalloc.so the dynamic loader can preload (Debian's libjemalloc2), or None."""
    import ctypes.util
    name = ctypes.util.find_library("jemalloc")
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"):
        if name and os.path.exists(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


# ----------------------------------------------------------------------------
# data and one variant


def mean_train_tokens(csv_path, encoder, max_length):
    """Real tokens per sample over the training split: what length-grouped steps average over an epoch."""
    import numpy as np
    from transformers import AutoTokenizer

    from data import read_csv, split_indices, tokenize
    from checkpoint import resolve_encoder
    ds = read_csv(csv_path)
    train_idx, _ = split_indices(ds.labels, 0.1, 1234)  # configs/mini.json keeps the default split
    tok = AutoTokenizer.from_pretrained(resolve_encoder(encoder)).backend_tokenizer
    return float(np.mean([len(s) for s in tokenize(tok, [ds.texts[i] for i in train_idx], max_length)]))


def run_variant(argv, log_path, threads, allocator, warmup, backend):
    """In a fresh process: the config's data, model and optimizer as train.py builds them (compiled where the
    config says so), then train.py's own train_step timed step by step (no evaluation, checkpoint or log in
    between), then one validation pass -> per-step seconds and tokens, the kernel's own figures over the
    measured steps (user and sys CPU seconds, minor page faults), peak RSS before the validation, final AUC."""
    import resource

    set_allocator(allocator)
    import torch
    torch.set_num_threads(threads)
    import train
    from checkpoint import load_tokenizer
    from common import LABELS
    from config import load_config
    from data import micro_batches, prepare
    from device import init_distributed, on_device, resolve_precision
    from optim import get_lr, make_optimizer
    from validation import validate
    cfg, _ = load_config(argv)
    _, _, device = init_distributed(cfg)  # one process: the config's device
    precision = resolve_precision(cfg.precision, device)
    seconds, real_tokens, padded_tokens = [], [], []
    with open(log_path, "w") as log, redirect_stdout(log), redirect_stderr(log):
        data = prepare(cfg, load_tokenizer(cfg), cfg.batch_size * cfg.accum_steps)
        raw, optimizer, scaler, autocast, pos_weight = train.build_training(cfg, data, precision, device)
        if allocator == "issue-28-filed":  # torch's default on CPU tensors then: the for-loop AdamW
            optimizer = make_optimizer(raw, cfg, fused=False)
        # as train.py compiles; --quick: backend "eager" (dynamo alone, no C++ to build, seconds)
        model = torch.compile(raw, **({"backend": backend} if backend else {})) if cfg.compile else raw
        batches = on_device(micro_batches(data, cfg, rank=0, world=1, samples_seen=0), device)
        raw.train()
        for step in range(cfg.max_steps):
            if step == warmup:
                before = resource.getrusage(resource.RUSAGE_SELF)
            for g in optimizer.param_groups:
                g["lr"] = g["peak_lr"] * get_lr(step, cfg.max_steps, cfg.warmup_steps)
            train.seed_step(cfg, 0, step)
            t0 = time.perf_counter()
            _, _, real, padded = train.train_step(model, raw, batches, optimizer, scaler, autocast, pos_weight,
                                                  cfg.accum_steps, cfg.grad_clip, skip_nonfinite=True)
            seconds.append(time.perf_counter() - t0)
            real_tokens.append(real)
            padded_tokens.append(padded)
        after, peak_mb = resource.getrusage(resource.RUSAGE_SELF), peak_rss_mb()
        metrics, _, _ = validate(raw, data.val_seqs, data.val_idx, data.ds.labels, LABELS, cfg, device, autocast,
                                 0, 1)
    return {"precision": precision, "step_seconds": seconds, "step_real_tokens": real_tokens,
            "step_padded_tokens": padded_tokens, "val_auc": metrics["aucroc_macro"], "peak_rss_mb": peak_mb,
            "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime,
            "minor_faults": after.ru_minflt - before.ru_minflt}


def measure(name, over, allocator, argv, log, threads, warmup, bf16_ok, backend):
    """One variant in a fresh process -> run_variant's figures, or {"variant", "skipped": why}."""
    why = ("n/a (no bf16 on this CPU)" if over["precision"] == "bf16" and not bf16_ok else
           "n/a (no libjemalloc on this machine)" if allocator == "jemalloc" and not jemalloc_path() else None)
    if why:
        print(f"{name}: {why}", file=sys.stderr)
        return {"variant": name, "skipped": why}
    print(f"{name} ...", file=sys.stderr, flush=True)
    preload = os.environ.get("LD_PRELOAD")
    if allocator == "jemalloc":  # the spawned interpreter inherits it: jemalloc is malloc from its first call
        os.environ["LD_PRELOAD"] = jemalloc_path()
    try:
        r = run_isolated(run_variant, argv + [x for k, v in over.items() for x in (f"--{k}", v)], log, threads,
                         allocator, warmup, backend)
    except Exception as e:
        tail = open(log).read()[-3000:] if os.path.exists(log) else ""
        raise BenchError(f"{name} failed ({type(e).__name__}: {e}); its log ends:\n{tail}") from None
    finally:
        if preload is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = preload
    if r["precision"] != over["precision"]:  # train.py fell back: these would be fp32 figures
        return {"variant": name, "skipped": f"n/a (ran as {r['precision']})"}
    return r


def figures(r, warmup, batch, params, peak_gflops):
    """Throughput over the measured steps (warm-up steps dropped)."""
    secs = sum(r["step_seconds"][warmup:])
    steps = len(r["step_seconds"]) - warmup
    real, padded = sum(r["step_real_tokens"][warmup:]), sum(r["step_padded_tokens"][warmup:])
    cpu = r["user_s"] + r["sys_s"]
    return {"steps": steps, "seconds": secs, "samples_per_s": steps * batch / secs, "real_tokens_per_s": real / secs,
            "user_s": r["user_s"], "sys_s": r["sys_s"], "sys_fraction": r["sys_s"] / cpu if cpu else None,
            "minor_faults": r["minor_faults"],
            "real_tokens_per_sample": real / (steps * batch), "padding_fraction": 1 - real / padded,
            "mfu_fp32_peak": mfu(params, real, secs, peak_gflops, training=True)}


# ----------------------------------------------------------------------------


def run(argv=None):
    p = argparse.ArgumentParser(description="Training speed: naive padding vs length grouping vs bf16.")
    add_common_args(p)
    p.add_argument("--rows", type=int, default=2000, help="rows drawn from the real data (default 2000)")
    p.add_argument("--steps", type=int, default=16, help="measured optimizer steps per variant (default 16)")
    p.add_argument("--warmup", type=int, default=2, help="optimizer steps run first and left out (default 2)")
    p.add_argument("--max_length", type=int, default=256)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rows < 100:
        raise BenchError("--steps must be >= 1, --warmup >= 0 and --rows >= 100")
    import torch
    threads = physical_cores()
    torch.set_num_threads(threads)
    data, batch = SHARED_TRAIN, 32
    if args.quick:
        data, args.rows, args.steps, args.warmup, args.max_length, batch = SAMPLE, None, 2, 1, 64, 8
    elif not os.path.isfile(data):
        raise BenchError(f"{data}: not found; the real rows live in ../shared (see its README), or use --quick")

    dev = machine()
    peak = measure_peak(n=256 if args.quick else 2048, repeats=3 if args.quick else 5,
                        budget_s=2 if args.quick else 10)
    bf16_ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    with tempfile.TemporaryDirectory(prefix="train_speed-") as tmp:
        encoder = tiny_encoder(os.path.join(tmp, "tiny")) if args.quick else "sentence-transformers/all-MiniLM-L6-v2"
        csv_path = os.path.join(tmp, "train.csv")
        n_rows = write_subset(data, args.rows, csv_path)
        params = count_params(encoder)
        data_tokens = mean_train_tokens(csv_path, encoder, args.max_length)
        total = args.warmup + args.steps
        base = [os.path.join(ROOT, "configs", "mini.json"), "--encoder", encoder, "--data_path", csv_path,
                "--max_length", str(args.max_length), "--batch_size", str(batch), "--max_steps", str(total),
                "--dropout", "0.1", "--truncation", "head", "--eval_max_length", "0",
                "--eval_every", str(total), "--log_every", str(total), "--aim", "false",
                "--cache_dir", os.path.join(tmp, "cache")]
        results, backend = [], "eager" if args.quick else None
        for i, (name, over, allocator) in enumerate(VARIANTS):
            r = measure(name, over, allocator, base + ["--out_dir", os.path.join(tmp, f"run{i}")],
                        os.path.join(tmp, f"run{i}.log"), threads, args.warmup, bf16_ok, backend)
            results.append(r if "skipped" in r else
                           {"variant": name, "precision": r["precision"], "allocator": allocator,
                            "compile": over.get("compile") == "true", "val_auc": r["val_auc"],
                            "peak_rss_mb": r["peak_rss_mb"],
                            **figures(r, args.warmup, batch, params, peak["fp32_gflops"]),
                            "step_seconds": r["step_seconds"]})
    report(args, dev, peak, results, n_rows, batch, params, data_tokens)


def kernel_table(results):
    """(c) and its allocator and compile variants side by side: what the kernel costs, as ratios to (c)."""
    c = results[2]
    rows = [[r["variant"], fmt(r.get("samples_per_s"), ".2f"), fmt(r.get("user_s"), ".1f"), fmt(r.get("sys_s"), ".1f"),
             fmt(r.get("sys_fraction"), ".0%"), fmt(r.get("minor_faults"), ",.0f"), fmt(r.get("peak_rss_mb"), ",.0f"),
             *(fmt(ratio(r.get(k), c.get(k)), ".2f", "x") for k in ("samples_per_s", "minor_faults", "peak_rss_mb"))]
            if "skipped" not in r else [r["variant"], *["n/a"] * 6, r["skipped"], "n/a", "n/a"] for r in results[2:]]
    return markdown_table(["variant", "samples/s", "user s", "sys s", "sys share of CPU", "minor faults",
                           "peak RSS MB (training)", "samples/s vs (c)", "faults vs (c)", "RSS vs (c)"], rows)


def report(args, dev, peak, results, n_rows, batch, params, data_tokens):
    a, b, c, c1 = results[:4]
    base = a.get("samples_per_s")
    rows = [[r["variant"], r.get("precision", "-"), fmt(r.get("samples_per_s"), ".2f"),
             fmt(r.get("real_tokens_per_s"), ",.0f"), fmt(r.get("real_tokens_per_sample"), ".1f"),
             fmt(r.get("padding_fraction"), ".0%"), fmt(r.get("mfu_fp32_peak"), ".1%"),
             fmt(r.get("peak_rss_mb"), ",.0f"), fmt(r.get("val_auc"), ".4f"),
             fmt(ratio(r.get("samples_per_s"), base), ".2f", "x") if "skipped" not in r else r["skipped"]]
            for r in results]
    table = markdown_table(["variant", "precision", "samples/s", "real tokens/s", "real tokens/sample", "padding",
                            "MFU (fp32 peak)", "peak RSS MB", "val AUC", "vs (a)"], rows)
    vs_c1 = ratio(c.get("samples_per_s"), c1.get("samples_per_s"))
    auc_gap = (c["val_auc"] - b["val_auc"]) if c.get("val_auc") is not None and b.get("val_auc") is not None else None
    targets = [target("(b) samples/s >= 3.5x (a)", ratio(b.get("samples_per_s"), base), 3.5,
                      fmt(ratio(b.get("samples_per_s"), base), ".2f", "x")),
               target("(c) samples/s >= 5x (a)", ratio(c.get("samples_per_s"), base), 5.0,
                      fmt(ratio(c.get("samples_per_s"), base), ".2f", "x") if "skipped" not in c else c["skipped"]),
               target("(c) MFU >= 60% of the fp32 matmul peak", c.get("mfu_fp32_peak"), 0.60,
                      fmt(c.get("mfu_fp32_peak"), ".1%") if "skipped" not in c else c["skipped"]),
               target("(c) samples/s >= 1.5x (c1), the step when issue 28 was filed", vs_c1, 1.5, fmt(vs_c1, ".2f", "x")),
               target("(c) sys time <= 10% of CPU time", c.get("sys_fraction"), 0.10,
                      fmt(c.get("sys_fraction"), ".1%"), at_most=True),
               target("(c) peak RSS <= 2,000 MB", c.get("peak_rss_mb"), 2000,
                      fmt(c.get("peak_rss_mb"), ",.0f", " MB"), at_most=True),
               target("(c) val AUC - (b) val AUC (no goal: a few hundred rows, a few steps)", auc_gap, None,
                      fmt(auc_gap, "+.4f") if auc_gap is not None else "n/a")]
    what = "data/sample/train.csv (tiny random model)" if args.quick else \
        f"{n_rows:,} random rows (seed 0) of ../shared/data/jigsaw/train.csv"
    notes = [f"Machine: {describe(dev)}.", *peak_lines(peak),
             f"Model: {'tiny random BERT' if args.quick else 'all-MiniLM-L6-v2'}, {params:,} non-embedding "
             f"parameters; MFU = 6 x params x real tokens / time / fp32 peak.",
             f"Data: {what}; 90% train / 10% validation (split_seed 1234); max_length {args.max_length}, batch "
             f"{batch}, configs/mini.json hyper-parameters with dropout 0.1; {args.warmup} warm-up + {args.steps} measured optimizer "
             f"steps per variant (evaluation excluded); val AUC = each run's final eval (mean over 6 labels).",
             f"Length-grouped steps are a random draw of length-sorted ones: the measured steps average the "
             f"'real tokens/sample' above, the training split {data_tokens:.1f}; the further apart, the less a "
             f"ratio means (more --steps narrow it)."]
    if not args.quick:
        notes.append(SHARED_NOTE + ".")
    md = "\n".join([f"## Training speed ({'quick' if args.quick else 'full'})", "", table, "", kernel_table(results),
                    "", targets_table(targets),
                    "", *[f"- {n}" for n in notes]])
    write_results("train_speed", md, {"machine": dev, "peak": peak, "params_non_embedding": params,
                                      "rows": n_rows, "data_real_tokens_per_sample": data_tokens, "batch_size": batch,
                                      "max_length": args.max_length,
                                      "warmup_steps": args.warmup, "measured_steps": args.steps,
                                      "variants": results, "targets": targets, "notes": notes},
                  args.out, args.quick)


if __name__ == "__main__":
    main_guard(run)
