"""Syncs and kernels per optimizer step on a GPU, counted by torch.profiler around train.py's own step and loop.

    python bench/gpu_profile.py                 # CUDA: bert-base (random init), batch 128, eager and compiled
    python bench/gpu_profile.py --quick         # CPU, tiny random BERT: keeps it working (counts CPU ops only)

Runs bench/gpu_step.py's variant 4 (eager) and 5 (compile, bucketed widths) loop for --warmup steps, then
profiles --steps steps (a multiple of gpu_step's log_every of 50 would hold its sync; the default 50 holds one)
and counts, per step: CUDA kernels launched, and the CUDA runtime calls that make the host wait for the GPU
(cudaStreamSynchronize, cudaDeviceSynchronize, cudaEventSynchronize, and synchronous cudaMemcpy).
Writes bench/results/gpu_profile.json and .md.
"""
import argparse
import collections
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import describe, machine, main_guard, markdown_table, write_results  # noqa: E402
from gpu_step import VARIANTS, bert_base_encoder, gpu_args, run_variant, tiny_encoder  # noqa: E402

SYNCING = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


def profile_variant(variant, encoder, device, args):
    """gpu_step.run_variant's loop, its measured steps under the profiler -> per-step counts."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    # warm-up steps (compilation) unrecorded, then the measured ones
    with profile(activities=activities, schedule=schedule(wait=args.warmup, warmup=0, active=args.steps)) as prof:
        out = run_variant(variant, encoder, device, args, 1, {"bf16_gflops": None, "gpu": None}, prof)
    names = collections.Counter()
    kernels = 0
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels += 1
        elif e.name in SYNCING:  # cudaMemcpyAsync is not in it: only the synchronous calls
            names[e.name] += 1
    return {"variant": variant[0], "steps": args.steps, "kernels_per_step": kernels / args.steps,
            "syncs_per_step": sum(names.values()) / args.steps, "syncs": dict(names), "step_ms": out["step_ms"]}


def run(argv=None):
    p = argparse.ArgumentParser(description="Syncs and kernels per training step, counted by torch.profiler.")
    args, device = gpu_args(p, argv, (50, "profiled steps (default 50: one log step among them)"),
                            "gpu_profile.py profiles a GPU")
    dev = machine(device)
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu_profile-") as tmp:
        encoder = tiny_encoder(os.path.join(tmp, "tiny")) if args.quick else bert_base_encoder(os.path.join(tmp, "b"))
        for v in VARIANTS[3:]:
            print(f"{v[0]}: {args.warmup} + {args.steps} profiled steps ...", file=sys.stderr, flush=True)
            results.append(profile_variant(v, encoder, device, args))
    rows = [[r["variant"], f"{r['kernels_per_step']:,.0f}", f"{r['syncs_per_step']:.2f}", str(r["syncs"]),
             f"{r['step_ms']:,.1f}"] for r in results]
    md = "\n".join([f"## Syncs and kernels per training step ({'quick, CPU' if args.quick else 'full'})", "",
                    markdown_table(["variant", "kernels/step", "syncs/step", "sync calls", "ms/step (profiled)"],
                                   rows), "", f"- Machine: {describe(dev)}.",
                    f"- {args.warmup} warm-up steps, then {args.steps} profiled; the loop syncs once every 50 steps."])
    write_results("gpu_profile", md, {"machine": dev, "variants": results, "warmup_steps": args.warmup,
                                      "profiled_steps": args.steps}, args.out, args.quick)


if __name__ == "__main__":
    main_guard(run)
