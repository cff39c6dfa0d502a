"""Cold start: `python predict.py "comment"` as a whole process, on each runtime, against torch + transformers.

    python bench/cold_start.py                                   # runs/mini/best.pt (a minute or two)
    python bench/cold_start.py --checkpoint runs/mini_average/best.pt
    python bench/cold_start.py --quick                           # tiny random model (CI, seconds)

The checkpoint is exported (fp32 + int8) into a temporary folder with export.py; predict.py runs
on it with its default (--runtime auto: the runtime it picks for one comment on this CPU) and with each
runtime forced (OpenVINO where installed). The baseline is what serving without the export
would take: a script that loads the checkpoint with torch (checkpoint.load_checkpoint,
model_from_checkpoint) and the tokenizer with transformers' AutoTokenizer, and prints the same six
probabilities. Each command: 1 warm-up run (page cache), then the median of 5 (wall time from
spawn to exit, peak RSS of the child from os.wait4 in a light launcher, see LAUNCHER).
Writes bench/results/cold_start.json and .md.
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (ROOT, BenchError, add_common_args, describe, fmt, machine, main_guard,  # noqa: E402
                    markdown_table, measure_peak, peak_lines, ratio, require_checkpoint, run_isolated, run_once,
                    target, targets_table, train_tiny, write_results)

COMMENT = "you are an idiot, stop editing this page"
CHECK_ROWS = 256  # validation rows export.py checks each runtime on: the check is not what is measured here
# The baseline: the same six probabilities, loaded the way training left them (argv: checkpoint, comment, the
# export's calibration map as JSON: the one number-crunching step of the export it needs to agree).
TORCH_SCRIPT = """
import json, sys, torch
from transformers import AutoTokenizer
from checkpoint import load_checkpoint, model_from_checkpoint, resolve_encoder
from decisions import apply_calibration
ckpt = load_checkpoint(sys.argv[1])
model, names = model_from_checkpoint(ckpt), ckpt["model_config"]["labels"]
tok = AutoTokenizer.from_pretrained(resolve_encoder(ckpt["config"]["encoder"]))
enc = tok([sys.argv[2]], truncation=True, max_length=ckpt["config"]["max_length"], return_tensors="pt")
with torch.inference_mode():
    logits = model(enc["input_ids"], enc["attention_mask"]).numpy()
probs = apply_calibration(logits, json.loads(sys.argv[3]), names)[0]
print(json.dumps({"scores": dict(zip(names, probs.tolist()))}))
"""


def export_quietly(ckpt, out):
    """export.py's export in a process of its own (OpenVINO, checked there, pins the threads of the process
    it runs in), its progress lines on stderr: stdout is the table."""
    import export
    with contextlib.redirect_stdout(sys.stderr):
        return export.export(ckpt, out, quantize="int8", check_rows=CHECK_ROWS)


def measure(cmd, runs, warmup=True):
    """1 warm-up run, then the median of `runs` -> dict with walls, RSS and the last stdout."""
    if warmup:
        run_once(cmd, ROOT)
    walls, rss, stdout = [], [], ""
    for _ in range(runs):
        w, m, stdout = run_once(cmd, ROOT)
        walls.append(w)
        rss.append(m)
    return {"wall_s": statistics.median(walls), "peak_rss_mb": statistics.median(rss), "walls": walls,
            "rss_mb": rss, "scores": json.loads(stdout.strip().splitlines()[-1])["scores"]}


# ----------------------------------------------------------------------------


def run(argv=None):
    p = argparse.ArgumentParser(description="Cold start of predict.py (int8, fp32) vs a torch + transformers script.")
    add_common_args(p)
    p.add_argument("--checkpoint", help="a checkpoint written by train.py (default runs/mini/best.pt)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per command, after 1 warm-up (default 5)")
    args = p.parse_args(argv)
    if args.runs < 1:  # the median of no runs
        raise BenchError(f"--runs must be >= 1, got {args.runs}")
    if args.quick:
        args.runs = 1
    if args.checkpoint or not args.quick:
        require_checkpoint(args.checkpoint or os.path.join(ROOT, "runs", "mini", "best.pt"))
    dev = machine()
    with tempfile.TemporaryDirectory(prefix="cold_start-") as tmp:
        ckpt = os.path.abspath(args.checkpoint or os.path.join(ROOT, "runs", "mini", "best.pt"))
        if args.quick and not args.checkpoint:
            ckpt = train_tiny(tmp)
        out = os.path.join(tmp, "export")
        meta = run_isolated(export_quietly, ckpt, out)
        sizes = {k: os.path.getsize(os.path.join(out, f)) / 1e6 for k, f in meta["models"].items()}
        # the machine's context, as every benchmark gives it; no MFU: a cold start is imports and loading
        peak = measure_peak(n=256 if args.quick else 2048, repeats=3 if args.quick else 5,
                            budget_s=2 if args.quick else 10)
        predict = [sys.executable, os.path.join(ROOT, "predict.py"), "--json", "--model", out]
        from runtimes import choose, cpu_flags, installed
        auto = choose(meta, cpu_flags(), small_job=True)[0]
        forced = [r for r in ("openvino", "onnxruntime-int8", "onnxruntime-fp32") if r != "openvino" or installed(r)]
        commands = [(f"predict.py (default: {auto})", predict + [COMMENT], auto)]
        commands += [(f"predict.py --runtime {r}", predict + ["--runtime", r, COMMENT], r) for r in forced]
        commands += [("torch + transformers, checkpoint", [sys.executable, "-c", TORCH_SCRIPT, ckpt, COMMENT,
                                                           json.dumps(meta["calibration"])], None)]
        results = []
        for name, cmd, runtime in commands:
            print(f"{name}: {'' if args.quick else '1 + '}{args.runs} run(s) ...", file=sys.stderr, flush=True)
            r = {"variant": name, "default": name.startswith("predict.py (default"),
                 **measure(cmd, args.runs, warmup=not args.quick)}  # quick: no warm-up
            r["model_mb"] = (os.path.getsize(ckpt) / 1e6 if runtime is None else
                             sizes["int8" if runtime == "onnxruntime-int8" else "fp32"])
            results.append(r)
    report(args, dev, peak, results, ckpt)


def report(args, dev, peak, results, ckpt):
    default, torch_ = results[0], results[-1]
    base = torch_["scores"]
    for r in results:  # the same prediction? fp32 should agree to ~1e-6, int8 to ~1e-2
        r["max_abs_diff_vs_torch"] = max(abs(r["scores"][k] - base[k]) for k in base)
    rows = [[r["variant"], fmt(r["wall_s"], ".2f", " s"), fmt(r["peak_rss_mb"], ",.0f"), fmt(r["model_mb"], ",.1f"),
             fmt(r["max_abs_diff_vs_torch"], ".1e"), fmt(ratio(torch_["wall_s"], r["wall_s"]), ".1f", "x"),
             fmt(ratio(torch_["peak_rss_mb"], r["peak_rss_mb"]), ".1f", "x")] for r in results]
    table = markdown_table(["command", f"wall (median of {args.runs})", "peak RSS MB", "model file MB",
                            "max abs diff vs torch", "faster than torch", "less memory than torch"], rows)
    def limit(name, r, key, goal, unit):
        return target(f"{name}: {'wall' if key == 'wall_s' else 'peak RSS'} <= {goal} {unit}", r[key], goal,
                      fmt(r[key], ".2f" if key == "wall_s" else ",.0f", f" {unit}"), at_most=True)
    targets = [limit("default", default, "wall_s", 0.4, "s"), limit("default", default, "peak_rss_mb", 150, "MB")]
    notes = [f"Machine: {describe(dev)}.", *peak_lines(peak),
             f"Checkpoint: {'tiny random BERT' if args.quick and not args.checkpoint else ckpt}; one comment "
             f"({COMMENT!r}); every command prints its six probabilities as JSON.",
             "Wall: from spawn to exit of the whole process (imports, model load, tokenize, score, print); "
             + ("--quick: no warm-up run. " if args.quick else "1 warm-up run first: files come from the page cache. ")
             + "Peak RSS: os.wait4's ru_maxrss of that child, taken by a ~10 MB launcher (a child's ru_maxrss "
             "starts at its parent's peak).",
             "Every predict.py row runs on the same export folder, and loads the one model file it needs."]
    md = "\n".join([f"## Cold start ({'quick' if args.quick else 'full'})", "", table, "", targets_table(targets), "",
                    *[f"- {n}" for n in notes]])
    write_results("cold_start", md, {"machine": dev, "peak": peak, "comment": COMMENT, "runs": args.runs,
                                     "variants": results, "targets": targets, "notes": notes}, args.out, args.quick)


if __name__ == "__main__":
    main_guard(run)
