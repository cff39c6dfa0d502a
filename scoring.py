"""The serving core: an export folder read and checked, comments tokenized, cut into windows and scored on a
runtime (OpenVINO or onnxruntime), each label the max over a comment's windows. No torch, no transformers, no
scikit-learn: predict.py (the CLI), classifier.py (the API), serve.py, evaluate.py, export.py's checks and the
bench all score through here.

    from scoring import load_model, newest_export, score_texts
    model = load_model(newest_export())                  # or load_model("exports/mini", runtime="onnxruntime-fp32")
    probs = score_texts(model, ["you are an idiot"])     # (N, L) float32, model.labels' order

Long comments are not truncated. The whole comment is tokenized and cut into windows of max_length
tokens ([CLS] + max_length-2 tokens + [SEP]); consecutive windows share a quarter of their tokens
(so a phrase that long is always seen whole), the last window ends at the comment's end, and each
label takes the max over the comment's windows (toxic anywhere means toxic). A comment that fits is
a single window, exactly what training saw. int8 scores can move by about 1e-3 with the batch a
window lands in (activations are quantized per batch), and OpenVINO's bf16 ones slightly too; fp32
scores do not depend on the batch.
"""
import json
import os
import sys
import time
from types import SimpleNamespace

import numpy as np

import runtimes
from common import UsageError, first_line
from data import pad_batch, sorted_batches

# of export.json; export.py writes it, everything that reads an export refuses any other. 2 (2026-12-07): the
# labels are the export's own, the served thresholds are its policies' (no top-level thresholds), and decision
# policies and calibration are always there.
FORMAT_VERSION = 2
META_KEYS = ("labels", "max_length", "models", "tokenizer", "prefix_ids", "suffix_ids", "pad_id", "policies",
             "default_policy", "calibration", "base_rates", "validation_at_base_rates", "checkpoint", "versions", "opset")
OVERLAP = 4  # consecutive windows share 1/OVERLAP of their tokens
PIECE_CHARS = 1 << 15  # huge comments are tokenized in pieces cut at spaces: same ids, 10x less memory
ENCODE_CHARS = 1 << 19  # characters per tokenizer call: bounds the memory of its Encoding objects
PROGRESS_MIN = 256  # windows; below this a progress bar is noise
# Padded tokens per model call: batch 32 of comments up to 64 tokens, 4 windows of 512. Bounds the
# activations (an fp32 attention score tensor of 32 x 12 x 512 x 512 is 400 MB alone): 5,000 real comments
# peak at 466 MB with onnxruntime int8 instead of 2.9 GB, and run 1.12x faster (bench/README.md).
MAX_TOKENS = 2048


class ModelError(UsageError):
    """A bad model folder or export.json, or a runtime that cannot run it: the message names the folder or file."""


# ----------------------------------------------------------------------------
# the model: export.json, tokenizer, one runtime session

def newest_export(root="exports"):
    """The folder under root with the newest export.json (hidden, half-written exports skipped)."""
    dirs = [os.path.join(root, d) for d in (os.listdir(root) if os.path.isdir(root) else []) if d[:1] != "."]
    dirs = [d for d in dirs if os.path.isfile(os.path.join(d, "export.json"))]
    if not dirs:
        raise ModelError(f"no model under {root}/: export one with `python export.py --checkpoint "
                         f"runs/mini/best.pt --quantize int8`, or pass --model DIR")
    return max(dirs, key=lambda d: os.path.getmtime(os.path.join(d, "export.json")))


def read_meta(model_dir):
    """export.json, checked: a folder from another format_version is refused, not misread."""
    path = os.path.join(model_dir, "export.json")
    if not os.path.isfile(path):
        what = "no export.json, not an export folder" if os.path.isdir(model_dir) else "no such folder"
        raise ModelError(f"{model_dir}: {what} (export a model with: python export.py)")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable ({first_line(e)})") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise ModelError(f"{path}: format_version {version!r}, this project reads version {FORMAT_VERSION}: "
                         f"re-export it with this project's export.py")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ModelError(f"{path}: missing key(s) {', '.join(missing)}")
    if meta["max_length"] - len(meta["prefix_ids"]) - len(meta["suffix_ids"]) < 1:
        raise ModelError(f"{path}: max_length {meta['max_length']} leaves no room for text")
    return meta


def load_model(model_dir, runtime="auto", small_job=False):
    """-> namespace(meta, runtime, why, path, labels, tokenizer, session). runtime "auto" takes runtimes.choose's
    pick for this CPU (and for a small job: a few comments in all); any name in runtimes.RUNTIMES forces it."""
    from tokenizers import Tokenizer  # here: a bad folder or flag fails before it loads

    meta = read_meta(model_dir)
    try:
        if runtime == "auto":
            runtime, why = runtimes.choose(meta, runtimes.cpu_flags(), small_job=small_job)
        else:
            runtimes.check(runtime, meta, model_dir)
            why = "forced by --runtime"
    except runtimes.RuntimeChoiceError as e:
        raise ModelError(str(e)) from None
    kind = "int8" if runtime == "onnxruntime-int8" else "fp32"
    if kind not in meta["models"]:
        raise ModelError(f"{model_dir}/export.json: no {kind} model listed in models, which {runtime} runs")
    try:  # missing or corrupt files: one line, whatever the library's error type
        tokenizer = Tokenizer.from_file(os.path.join(model_dir, meta["tokenizer"]))
        session, path = runtimes.open_session(runtime, model_dir, meta, runtimes.physical_cores())
    except Exception as e:
        raise ModelError(f"{model_dir}: cannot load {meta['tokenizer']} or {meta['models'][kind]} for {runtime} "
                         f"({first_line(e)})") from None
    return SimpleNamespace(meta=meta, runtime=runtime, why=why, path=path, labels=list(meta["labels"]),
                           tokenizer=tokenizer, session=session)


# ----------------------------------------------------------------------------
# tokenizing, windows, scoring

def split_text(text, size=PIECE_CHARS):
    """Pieces of about size characters cut at a space, where BERT's pre-tokenizer splits anyway
    (only a run of over size/2 characters without one is cut mid-way)."""
    out, i = [], 0
    while len(text) - i > size:
        j = text.rfind(" ", i + size // 2, i + size)
        j = j if j > i else i + size
        out.append(text[i:j])
        i = j
    return out + [text[i:]]


def encode_texts(tokenizer, texts, offsets=False):
    """Token ids of each text, no special tokens, nothing truncated -> list of int32 arrays; with offsets,
    -> (ids, offsets): also each token's (begin, end) character offsets in its text, (n,2) int64 arrays."""
    pieces, base = [], []  # base: where each piece starts in its text, so offsets count from the text's start
    for i, t in enumerate(texts):
        at = 0
        for p in split_text(t):
            pieces.append((i, p))
            base.append(at)
            at += len(p)
    parts, spans, g = [[] for _ in texts], [[] for _ in texts], 0
    while g < len(pieces):
        n, chars = 1, len(pieces[g][1])
        while g + n < len(pieces) and chars + len(pieces[g + n][1]) <= ENCODE_CHARS:
            chars, n = chars + len(pieces[g + n][1]), n + 1
        encs = tokenizer.encode_batch([p for _, p in pieces[g:g + n]], add_special_tokens=False)
        for k, ((i, _), enc) in enumerate(zip(pieces[g:g + n], encs)):
            parts[i].append(np.array(enc.ids, dtype=np.int32))
            if offsets:
                spans[i].append(np.array(enc.offsets, dtype=np.int64).reshape(-1, 2) + base[g + k])
        g += n
    ids = [p[0] if len(p) == 1 else np.concatenate(p) for p in parts]
    return (ids, [s[0] if len(s) == 1 else np.concatenate(s) for s in spans]) if offsets else ids


def window_starts(n, body):
    """Starts of windows of `body` tokens over n tokens: a step of body - body//OVERLAP, and the last
    window ends at n, so every token is in a window and every window of a long comment is full."""
    return [0] if n <= body else list(range(0, n - body, body - body // OVERLAP)) + [n - body]


def make_windows(seqs, body):
    """All windows of all comments -> (owner, start, end) int64 arrays, one entry per window."""
    starts = [window_starts(len(s), body) for s in seqs]
    owner = np.repeat(np.arange(len(seqs)), [len(st) for st in starts])
    start = np.array([x for st in starts for x in st], dtype=np.int64)
    return owner, start, np.minimum(start + body, np.array([len(s) for s in seqs], dtype=np.int64)[owner])


def window_batch(seqs, windows, idx, prefix, suffix, pad_id):
    """Windows idx with their special tokens, right-padded -> input_ids, attention_mask (B,T) int64."""
    owner, start, end = windows
    return pad_batch([np.concatenate([prefix, seqs[owner[k]][start[k]:end[k]], suffix]).astype(np.int64)
                      for k in idx], pad_id)


def score_texts(model, texts, batch_size=32, progress=True, max_tokens=None):
    """Probabilities (len(texts), L) float32 in model.labels order, each the max over the comment's
    windows. Windows are batched across comments, sorted by length, at most batch_size windows and
    max_tokens (default MAX_TOKENS) padded tokens a call: bounded memory. The order of texts is kept."""
    (owner, _, _), probs = score_windows(model, encode_texts(model.tokenizer, texts), batch_size, progress, max_tokens)
    out = np.zeros((len(texts), len(model.labels)), dtype=np.float32)
    np.maximum.at(out, owner, probs)  # probabilities are >= 0: the max from zeros is the max
    return out


def score_windows(model, seqs, batch_size=32, progress=True, max_tokens=None):
    """Every window of these token sequences scored -> ((owner, start, end), probs (windows, L) float32),
    batched as score_texts() says. A sequence's windows are consecutive, in order."""
    m = model.meta
    windows = make_windows(seqs, m["max_length"] - len(m["prefix_ids"]) - len(m["suffix_ids"]))
    owner, start, end = windows
    out = np.zeros((len(owner), len(model.labels)), dtype=np.float32)
    show = progress_bar(len(owner)) if progress and len(owner) >= PROGRESS_MIN else None
    done = 0
    widths = end - start + len(m["prefix_ids"]) + len(m["suffix_ids"])
    for b in sorted_batches(widths, batch_size, max_tokens or MAX_TOKENS):
        ids, mask = window_batch(seqs, windows, b, m["prefix_ids"], m["suffix_ids"], m["pad_id"])
        out[b] = model.session.run(["probs"], {"input_ids": ids, "attention_mask": mask})[0]  # (B,L)
        done += len(b)
        if show:
            show(done)
    return windows, out


def progress_bar(total):
    """A plain-text bar on stderr: redrawn in place twice a second on a terminal, else a line every 10 s."""
    tty, t0, last = sys.stderr.isatty(), time.time(), [0.0]

    def show(done):
        if done == total or time.time() - last[0] >= (0.5 if tty else 10):
            last[0] = time.time()
            line = f"scoring [{'#' * (30 * done // total):<30}] {done}/{total} windows {last[0] - t0:.0f}s"
            sys.stderr.write(("\r" + line if tty else line + "\n") + ("\n" if tty and done == total else ""))
            sys.stderr.flush()
    return show
