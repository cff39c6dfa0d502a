"""Load test: serve.py as a real process on 127.0.0.1, clients sending one comment a request, against predict.py --file.

    python bench/serve_load.py --model exports/mini-real --data ../shared/data/jigsaw/train.csv   # ~10 min alone
    python bench/serve_load.py --model exports/mini-real --data ../shared/data/jigsaw/train.csv --rss_chars 64
    python bench/serve_load.py --model exports/mini --quick          # a few requests a level (CI, seconds)
    python bench/serve_load.py --model M --data D --batch_wait_ms 0  # any serve.py flag after --serve_args

1. predict.py --file on the same N comments (--comments, a fixed sample of the data's comment_text), timed as
   a whole process and net of its start (the same command on one comment, subtracted): batch throughput.
2. serve.py (its runtime: --runtime, default auto) on a free loopback port; the server's RSS
   (/proc/PID/status) is read at start, after each level and after the RSS run.
3. 1, 8, 32 and 128 concurrent clients (asyncio, one keep-alive connection each), each request one comment of
   the N: throughput, p50/p95/p99 latency (request written -> response read), the mean texts per model
   call (/health's counters). Each level is bounded: --requests a level, --max_seconds a level.
4. Correctness: every answer is checked against classifier.Classifier.predict on the same text and runtime
   (max abs score difference; fp32 is batch-independent to 1e-5, int8 and OpenVINO bf16 move with the batch),
   and every request must get exactly one 200 answer (the server's texts_scored counter must match).
5. RSS run: --rss_requests (default 20,000) more requests from 32 clients; RSS after vs before it
   (--rss_chars N: each comment's first N characters, so that 20,000 requests fit on a busy machine).
6. One Classifier.predict call on one comment (this process, same runtime), p50 over the 1-client comments:
   the 1-client HTTP p50 is compared with it.
The load generator runs on the same CPU as the server: on a 2-core machine it takes some of the server's time.
Writes bench/results/serve_load.json and .md (serve_load.quick.* with --quick).
"""
import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (ROOT, SHARED_NOTE, BenchError, add_common_args, fmt, main_guard, markdown_table,  # noqa: E402
                    target, targets_table, write_results)

LEVELS = (1, 8, 32, 128)


def comments(path, n, seed=0):
    """A fixed random sample of n comment_texts (the same every run)."""
    import numpy as np

    from data import read_csv
    texts = read_csv(path, names=()).texts  # comment_text alone: any CSV with it will do
    idx = np.random.default_rng(seed).permutation(len(texts))[:n]
    return [texts[i] for i in idx]


# ----------------------------------------------------------------------------
# the server process

class ServerProcess:
    def __init__(self, model, runtime, extra):
        cmd = [sys.executable, os.path.join(ROOT, "serve.py"), "--model", model, "--runtime", runtime,
               "--port", "0", *extra]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.lines, self.runtime = [], None
        for line in self.proc.stderr:
            self.lines.append(line)
            if " on " in line and "model: " in line and self.runtime is None:
                self.runtime = line.split(" on ", 1)[1].split()[0]
            if "listening on http://" in line:
                self.port = int(line.rsplit(":", 1)[1])
                break
        else:
            raise BenchError("serve.py did not start: " + "".join(self.lines[-3:]).strip())
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self.reader.start()

    def rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")) / 1024

    def stop(self):
        self.proc.terminate()
        self.proc.wait(120)


# ----------------------------------------------------------------------------
# the clients

async def http(reader, writer, method, path, body=b""):
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    size = next(int(ln.split(b":", 1)[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:"))
    return status, json.loads(await reader.readexactly(size))


async def get(port, path):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        return (await http(r, w, "GET", path))[1]
    finally:
        w.close()


async def load(port, texts, clients, n_requests, max_seconds):
    """clients keep-alive connections share n_requests (request k: texts[k % len]) -> (answers {k: (status,
    scores)}, latencies s, wall s, model calls, texts scored)."""
    before = await get(port, "/health")
    answers, latencies, next_k = {}, [], [0]
    t0 = time.perf_counter()

    async def client():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            while next_k[0] < n_requests and time.perf_counter() - t0 < max_seconds:
                k = next_k[0]
                next_k[0] += 1
                body = json.dumps({"texts": [texts[k % len(texts)]]}).encode()
                t = time.perf_counter()
                status, obj = await http(r, w, "POST", "/v1/classify", body)
                latencies.append(time.perf_counter() - t)
                if k in answers:
                    raise BenchError(f"request {k} answered twice")
                answers[k] = (status, obj["results"][0]["scores"] if status == 200 else obj)
        finally:
            w.close()
    await asyncio.gather(*[client() for _ in range(clients)])
    wall = time.perf_counter() - t0
    after = await get(port, "/health")
    return answers, latencies, wall, after["model_calls"] - before["model_calls"], \
        after["texts_scored"] - before["texts_scored"]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None


# ----------------------------------------------------------------------------
# the baseline: predict.py --file, and one Classifier.predict call

def predict_file(model, runtime, texts, tmp):
    """-> (wall of --file on texts, wall of the same on one comment): both whole processes."""
    walls = []
    for name, rows in (("all", texts), ("one", texts[:1])):
        path = os.path.join(tmp, f"{name}.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in rows)
        t = time.perf_counter()
        r = subprocess.run([sys.executable, os.path.join(ROOT, "predict.py"), "--model", model, "--runtime", runtime,
                            "--json", "--file", path], cwd=ROOT, capture_output=True, text=True)
        walls.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise BenchError(f"predict.py --file failed: {r.stderr.strip().splitlines()[-1]}")
    return walls


def api_reference(model, runtime, texts, single):
    """Classifier.predict's scores for every text (batched) and the p50 of one call on one comment."""
    from classifier import Classifier
    clf = Classifier(model, runtime)
    ref = [r["scores"] for r in clf.predict(texts)]
    times = []
    for t in single:
        t0 = time.perf_counter()
        clf.predict([t])
        times.append(time.perf_counter() - t0)
    return ref, statistics.median(times) if times else None


def max_diff(answers, ref):
    ok = [a for a in answers.values() if a[0] == 200]
    return max((abs(s[n] - ref[k % len(ref)][n]) for k, (c, s) in answers.items() if c == 200 for n in s),
               default=None) if ok else None


# ----------------------------------------------------------------------------

def run(argv=None):
    p = argparse.ArgumentParser(description="Load-test serve.py (see the docstring).")
    p.add_argument("--model", required=True, help="export folder")
    p.add_argument("--data", default=os.path.join(ROOT, "data", "sample", "train.csv"), help="CSV with comment_text")
    p.add_argument("--runtime", default="auto", help="the server's runtime (predict.py and the API take the same)")
    p.add_argument("--comments", type=int, default=500, help="distinct comments sent (and given to predict.py)")
    p.add_argument("--requests", type=int, default=500, help="requests a level at most (1 client: a fifth)")
    p.add_argument("--max_seconds", type=float, default=60, help="seconds a level at most")
    p.add_argument("--rss_requests", type=int, default=20000, help="requests of the RSS run (0: none)")
    p.add_argument("--rss_chars", type=int, default=0, help="the RSS run sends each comment's first N characters "
                                                             "(0: whole): on a busy machine 20,000 whole ones take hours")
    p.add_argument("--serve_args", nargs=argparse.REMAINDER, default=[], help="passed to serve.py")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.comments, args.requests, args.rss_requests = min(args.comments, 40), min(args.requests, 40), \
            min(args.rss_requests, 200)
    for flag in ("comments", "requests"):
        if getattr(args, flag) < 1:
            raise BenchError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    from common import sigterm_as_interrupt
    from scoring import read_meta
    read_meta(args.model)  # a bad folder: one line before anything starts
    texts = comments(args.data, args.comments)
    with sigterm_as_interrupt():  # a stopped benchmark stops its server too
        server = ServerProcess(args.model, args.runtime, args.serve_args)
        try:
            data = measure(args, texts, server)
        finally:
            server.stop()
    report(args, texts, data)


def measure(args, texts, server):
    """The baseline first, then the levels and the API reference, close in time (a shared machine's load
    drifts), then the long RSS run."""
    rss, levels, runtime = {"at start": server.rss_mb()}, [], server.runtime
    with tempfile.TemporaryDirectory() as tmp:  # the server is idle: the baseline has the CPU
        wall_all, wall_one = predict_file(args.model, runtime, texts, tmp)
    print(f"predict.py --file: {len(texts) / wall_all:.1f} comments/s with its start", file=sys.stderr, flush=True)
    for c in LEVELS:
        n = max(c, args.requests // 5) if c == 1 else args.requests
        answers, lat, wall, calls, scored = asyncio.run(load(server.port, texts, c, n, args.max_seconds))
        levels.append({"clients": c, "requests": len(answers), "ok": sum(a[0] == 200 for a in answers.values()),
                       "scored": scored, "wall_s": wall, "per_s": len(answers) / wall, "p50_ms": 1e3 * pct(lat, .5),
                       "p95_ms": 1e3 * pct(lat, .95), "p99_ms": 1e3 * pct(lat, .99),
                       "texts_per_call": scored / calls if calls else None, "answers": answers})
        rss[f"after {c} clients"] = server.rss_mb()
        print(f"{c} clients: {levels[-1]['per_s']:.1f} comments/s, p50 {levels[-1]['p50_ms']:.0f} ms",
              file=sys.stderr, flush=True)
    ref, api_p50 = api_reference(args.model, runtime, texts, texts[:min(len(texts), 50)])
    rss_run = None
    if args.rss_requests:
        short = [t[:args.rss_chars] for t in texts] if args.rss_chars else texts
        answers, _, wall, _, scored = asyncio.run(load(server.port, short, 32, args.rss_requests, 10 * 3600))
        rss_run = {"requests": len(answers), "ok": sum(a[0] == 200 for a in answers.values()), "scored": scored,
                   "wall_s": wall, "chars": args.rss_chars or None, "answers": answers}
        ref_short = None if not args.rss_chars else api_reference(args.model, runtime, short, [])[0]
        rss[f"after {len(answers):,} more requests"] = server.rss_mb()
    for lv in levels:
        lv["max_abs_diff"] = max_diff(lv.pop("answers"), ref)
    if rss_run:
        rss_run["max_abs_diff"] = max_diff(rss_run.pop("answers"), ref_short or ref)
    return {"runtime": runtime, "rss_mb": rss, "levels": levels, "rss_run": rss_run,
            "predict_file": {"comments": len(texts), "wall_s": wall_all, "start_s": wall_one,
                             "per_s": len(texts) / wall_all,
                             "per_s_net": (len(texts) - 1) / max(wall_all - wall_one, 1e-9)},
            "api_one_call_p50_ms": 1e3 * api_p50}


def report(args, texts, d):
    from harness import machine, describe
    pf = d["predict_file"]
    rows = [[f"{lv['clients']} client(s)", f"{lv['requests']:,}", fmt(lv["per_s"]), fmt(lv["per_s"] / pf["per_s_net"],
             ".2f", "x"), fmt(lv["p50_ms"]), fmt(lv["p95_ms"]), fmt(lv["p99_ms"]), fmt(lv["texts_per_call"], ".1f"),
             fmt(lv["max_abs_diff"], ".1e")] for lv in d["levels"]]
    rows.append(["predict.py --file", f"{pf['comments']:,}", f"{pf['per_s_net']:.1f} net of start ({pf['per_s']:.1f} "
                 f"with its {pf['start_s']:.1f} s start)", "1.00x", "", "", "", "", ""])
    table = markdown_table(["load", "requests", "comments/s", "vs predict.py --file", "p50 ms", "p95 ms", "p99 ms",
                            "texts per model call", "max abs diff vs API"], rows)
    rss = markdown_table(["server RSS", "MB"], [[k, fmt(v)] for k, v in d["rss_mb"].items()])
    by = {lv["clients"]: lv for lv in d["levels"]}
    runs = d["levels"] + ([d["rss_run"]] if d["rss_run"] else [])
    lost = sum(r["requests"] - r["ok"] for r in runs) + sum(abs(r["scored"] - r["ok"]) for r in runs)
    rss_keys = list(d["rss_mb"])
    rss_growth = d["rss_mb"][rss_keys[-1]] / d["rss_mb"][rss_keys[-2]] if d["rss_run"] else None
    targets = [target("32 clients: throughput / predict.py --file (net of start)", by[32]["per_s"] / pf["per_s_net"], 0.8,
                      f"{by[32]['per_s'] / pf['per_s_net']:.2f}x, p99 {by[32]['p99_ms']:.0f} ms"),
               target("1 client: p50 / one Classifier.predict call", by[1]["p50_ms"] / d["api_one_call_p50_ms"], 1.2,
                      f"{by[1]['p50_ms']:.1f} / {d['api_one_call_p50_ms']:.1f} ms = "
                      f"{by[1]['p50_ms'] / d['api_one_call_p50_ms']:.2f}", at_most=True),
               target("requests lost, failed or scored twice", lost, 0, str(lost), at_most=True),
               target("max abs score diff vs the API (same runtime)", max(r["max_abs_diff"] or 0 for r in runs), None,
                      f"{max(r['max_abs_diff'] or 0 for r in runs):.1e} ({d['runtime']})"),
               target(f"RSS after the {d['rss_run']['requests']:,}-request run / before it"
                      + (f" (comments cut to {d['rss_run']['chars']} characters)" if d["rss_run"]["chars"] else "")
                      if d["rss_run"] else
                      "RSS growth", rss_growth, 1.2, fmt(rss_growth, ".3f"), at_most=True)]
    m = machine()
    notes = [f"Machine: {describe(m)}; a shared machine (other work running), so the figures are noisy; "
             f"the load generator runs on the same cores as the server.",
             f"Server and predict.py on {d['runtime']}; {len(texts):,} distinct comments from {args.data}"
             + (f" ({SHARED_NOTE})" if "shared" in args.data else "") + "."]
    markdown = "\n\n".join([table, rss, targets_table(targets), *notes])
    write_results("serve_load", markdown, {"machine": m, "targets": targets, **d}, args.out, args.quick)


if __name__ == "__main__":
    main_guard(run)
