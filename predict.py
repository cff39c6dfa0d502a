"""Score comments with a model exported by export.py: OpenVINO or onnxruntime, tokenizers and numpy; no torch.

    python predict.py "you are an idiot" "thanks for the edit"     # a table: 6 probabilities + labels
    python predict.py --json "you are an idiot"                    # one JSON object per line
    python predict.py --file comments.txt                          # one comment per line
    cat comments.txt | python predict.py -                         # the same from stdin
    python predict.py --file test.csv --out submission.csv         # Kaggle submission: id + 6 labels
    python predict.py --model exports/mini --runtime onnxruntime-fp32 --file comments.jsonl
    python predict.py --policy precision --thresholds threat=0.2 "I will find you"   # other decisions

--file reads .csv (comment_text, id if present), .jsonl (`text` or `comment_text`, `id` if present)
and anything else as one comment per line (a blank line is an empty comment: rows match lines); `-`
reads stdin the same way. Invalid UTF-8 is replaced with U+FFFD and counted in a warning.
--model DIR: an export folder, by default the newest under exports/. --runtime: by default the fastest
for this CPU (runtimes.py: OpenVINO in bf16 where the CPU has native bf16, else onnxruntime int8 when
the export has it, else fp32), said on stderr; a name forces one. Output: probabilities in
Kaggle's label order and the labels at or above the export's per-label thresholds (tuned on
validation; --policy, --threshold and --thresholds choose others, see classifier.py), and in --json
the span (character offsets) of the window behind each label. With --out and no --json, only the file
is written. The CLI is a layer over classifier.Classifier, the Python API.

Long comments are not truncated. The whole comment is tokenized and cut into windows of max_length
tokens ([CLS] + max_length-2 tokens + [SEP]); consecutive windows share a quarter of their tokens
(so a phrase that long is always seen whole), the last window ends at the comment's end, and each
label takes the max over the comment's windows (toxic anywhere means toxic). A comment that fits is
a single window, exactly what training saw. int8 scores can move by about 1e-3 with the batch a
window lands in (activations are quantized per batch), and OpenVINO's bf16 ones slightly too; fp32
scores do not depend on the batch. Input is read, scored and printed BLOCK comments at a time, and the
submission file is published whole at the end: an error in a later block (a bad line, a repeated id)
stops the run after the earlier blocks were printed, and leaves no submission.
"""
import argparse
import itertools
import json
import os
import sys
import time
from types import SimpleNamespace

from errors import UsageError, exit_on_error
from runtimes import physical_cores  # noqa: F401  (bench/common.py takes it from here)

FORMAT_VERSION = 1  # of export.json; export.py writes it, predict.py refuses any other
META_KEYS = ("labels", "max_length", "thresholds", "models", "tokenizer", "prefix_ids", "suffix_ids", "pad_id")
OVERLAP = 4  # consecutive windows share 1/OVERLAP of their tokens
PIECE_CHARS = 1 << 15  # huge comments are tokenized in pieces cut at spaces: same ids, 10x less memory
ENCODE_CHARS = 1 << 19  # characters per tokenizer call: bounds the memory of its Encoding objects
PROGRESS_MIN = 256  # windows; below this a progress bar is noise
# Padded tokens per model call: batch 32 of comments up to 64 tokens, 4 windows of 512. Bounds the
# activations (an fp32 attention score tensor of 32 x 12 x 512 x 512 is 400 MB alone): 5,000 real comments
# peak at 466 MB with onnxruntime int8 instead of 2.9 GB, and run 1.12x faster (bench/README.md).
MAX_TOKENS = 2048
# An input of at most this many characters in all is a small job, for onnxruntime int8: OpenVINO starts
# 0.6 s later (0.95 s against 0.32 s for one comment) and won 0.7-2.1 ms a comment in two runs (84.6-93.9
# against 78.7-79.6 comments/s), so it pays from about 290-810 comments of the real data's mean 379
# characters (AVX-512 EPYC, bench/README.md): the lower end is taken.
SMALL_JOB_CHARS = 100_000
BLOCK = 2048  # comments read, scored and written at a time: a file of any length runs in bounded memory


class PredictError(UsageError):
    """A bad model folder, flag or input: the message names it, main prints one line."""


def first_line(e):
    return str(e).splitlines()[0] if str(e).strip() else type(e).__name__


# ----------------------------------------------------------------------------
# the model: export.json, tokenizer, one onnxruntime session

def newest_export(root="exports"):
    """The folder under root with the newest export.json (hidden, half-written exports skipped)."""
    dirs = [os.path.join(root, d) for d in (os.listdir(root) if os.path.isdir(root) else []) if d[:1] != "."]
    dirs = [d for d in dirs if os.path.isfile(os.path.join(d, "export.json"))]
    if not dirs:
        raise PredictError(f"no model under {root}/: export one with `python export.py --checkpoint "
                           f"runs/mini/best.pt --quantize int8`, or pass --model DIR")
    return max(dirs, key=lambda d: os.path.getmtime(os.path.join(d, "export.json")))


def read_meta(model_dir):
    """export.json, checked: a folder from another format_version is refused, not misread."""
    path = os.path.join(model_dir, "export.json")
    if not os.path.isfile(path):
        what = "no export.json, not an export folder" if os.path.isdir(model_dir) else "no such folder"
        raise PredictError(f"{model_dir}: {what} (export a model with: python export.py)")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise PredictError(f"{path}: unreadable ({first_line(e)})") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise PredictError(f"{path}: format_version {version!r}, but this predict.py reads version "
                           f"{FORMAT_VERSION}; re-export with this project's export.py")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise PredictError(f"{path}: missing key(s) {', '.join(missing)}")
    if meta["max_length"] - len(meta["prefix_ids"]) - len(meta["suffix_ids"]) < 1:
        raise PredictError(f"{path}: max_length {meta['max_length']} leaves no room for text")
    return meta


def load_model(model_dir, runtime="auto", small_job=False):
    """-> namespace(meta, runtime, why, path, labels, thresholds, tokenizer, session). runtime "auto" takes
    runtimes.choose's pick for this CPU (and for a small job: a few comments in all); any name in
    runtimes.RUNTIMES forces it. The imports are here."""
    import numpy as np
    from tokenizers import Tokenizer

    import runtimes
    meta = read_meta(model_dir)
    try:
        if runtime == "auto":
            runtime, why = runtimes.choose(meta, runtimes.cpu_flags(), small_job=small_job)
        else:
            runtimes.check(runtime, meta, model_dir)
            why = "forced by --runtime"
    except runtimes.RuntimeChoiceError as e:
        raise PredictError(str(e)) from None
    kind = "int8" if runtime == "onnxruntime-int8" else "fp32"
    if kind not in meta["models"]:
        raise PredictError(f"{model_dir}/export.json: no {kind} model listed in models, which {runtime} runs")
    try:  # missing or corrupt files: one line, whatever the library's error type
        tokenizer = Tokenizer.from_file(os.path.join(model_dir, meta["tokenizer"]))
        session, path = runtimes.open_session(runtime, model_dir, meta, runtimes.physical_cores())
    except Exception as e:
        raise PredictError(f"{model_dir}: cannot load {meta['tokenizer']} or {meta['models'][kind]} for {runtime} "
                           f"({first_line(e)})") from None
    labels = list(meta["labels"])
    return SimpleNamespace(meta=meta, runtime=runtime, why=why, path=path, labels=labels, tokenizer=tokenizer,
                           session=session,
                           thresholds=np.array([meta["thresholds"][n] for n in labels], dtype=np.float64))


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
    import numpy as np
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
    import numpy as np
    starts = [window_starts(len(s), body) for s in seqs]
    owner = np.repeat(np.arange(len(seqs)), [len(st) for st in starts])
    start = np.array([x for st in starts for x in st], dtype=np.int64)
    return owner, start, np.minimum(start + body, np.array([len(s) for s in seqs], dtype=np.int64)[owner])


def window_batch(seqs, windows, idx, prefix, suffix, pad_id):
    """Windows idx with their special tokens, right-padded -> input_ids, attention_mask (B,T) int64."""
    import numpy as np

    from data import pad_batch
    owner, start, end = windows
    return pad_batch([np.concatenate([prefix, seqs[owner[k]][start[k]:end[k]], suffix]).astype(np.int64)
                      for k in idx], pad_id)


def score(model, texts, batch_size=32, progress=True, max_tokens=None):
    """Probabilities (len(texts), 6) float32 in model.labels order, each the max over the comment's
    windows. Windows are batched across comments, sorted by length, at most batch_size windows and
    max_tokens (default MAX_TOKENS) padded tokens a call: bounded memory. The order of texts is kept."""
    import numpy as np
    (owner, _, _), probs = score_windows(model, encode_texts(model.tokenizer, texts), batch_size, progress, max_tokens)
    out = np.zeros((len(texts), len(model.labels)), dtype=np.float32)
    np.maximum.at(out, owner, probs)  # probabilities are >= 0: the max from zeros is the max
    return out


def score_windows(model, seqs, batch_size=32, progress=True, max_tokens=None):
    """Every window of these token sequences scored -> ((owner, start, end), probs (windows, 6) float32),
    batched as score() says. A sequence's windows are consecutive, in order."""
    import numpy as np

    from data import sorted_batches
    m = model.meta
    windows = make_windows(seqs, m["max_length"] - len(m["prefix_ids"]) - len(m["suffix_ids"]))
    owner, start, end = windows
    out = np.zeros((len(owner), len(model.labels)), dtype=np.float32)
    show = progress_bar(len(owner)) if progress and len(owner) >= PROGRESS_MIN else None
    done = 0
    widths = end - start + len(m["prefix_ids"]) + len(m["suffix_ids"])
    for b in sorted_batches(widths, batch_size, max_tokens or MAX_TOKENS):
        ids, mask = window_batch(seqs, windows, b, m["prefix_ids"], m["suffix_ids"], m["pad_id"])
        out[b] = model.session.run(["probs"], {"input_ids": ids, "attention_mask": mask})[0]  # (B,6)
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


# ----------------------------------------------------------------------------
# output

def preview(text, room):
    """The comment on one terminal line: whitespace collapsed, control characters shown as '?'."""
    head = "".join(c if c.isprintable() else "?" for c in " ".join(text[:room * 4].split()))
    return head if len(head) <= room and len(text) <= room * 4 else head[:max(room - 3, 1)] + "..."


def print_table(labels, ids, texts, results, widths=None):
    """The rows of one block; the first (widths None) prints the header and sizes the id and labels
    columns, and later blocks take its widths back, so the table stays in line -> the widths."""
    import shutil
    cols = [max(len(n), 5) for n in labels]
    found = [", ".join(r["labels"]) or "-" for r in results]
    header = widths is None
    iw, lw = widths or (max(1, *map(len, ids)), max(len("labels"), *map(len, found)))
    room = max(20, shutil.get_terminal_size().columns - iw - sum(cols) - 2 * len(cols) - lw - 6)
    if header:
        print(f"{'#':>{iw}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(labels, cols)) + f"  {'labels':<{lw}}"
              "  comment")
    for name, r, flagged, text in zip(ids, results, found, texts):
        print(f"{name:>{iw}}  " + "  ".join(f"{r['scores'][n]:>{w}.3f}" for n, w in zip(labels, cols))
              + f"  {flagged:<{lw}}  {preview(text, room)}")
    return iw, lw


def print_json(ids, texts, results, first_index=0, with_ids=True):
    ascii_only = (sys.stdout.encoding or "").lower().replace("-", "") != "utf8"  # else \u escapes
    for i, (rid, text, r) in enumerate(zip(ids, texts, results), first_index):
        obj = {"index": i, "id": rid} if with_ids else {"index": i}
        obj.update(text=text, scores={n: round(p, 6) for n, p in r["scores"].items()}, labels=r["labels"],
                   spans={n: dict(s, score=round(s["score"], 6)) for n, s in r["spans"].items()})
        line = json.dumps(obj, ensure_ascii=ascii_only)
        for c in "\u2028\u2029\x85":  # valid raw in JSON, but str.splitlines() breaks lines there
            line = line.replace(c, f"\\u{ord(c):04x}")
        print(line)


def check_unique(ids, first, start, name):
    """A submission needs one row per id: a repeated one is refused, naming both comments (1-based)."""
    for k, rid in enumerate(ids, start + 1):
        if first.setdefault(rid, k) != k:
            raise PredictError(f"{name}: duplicate id {rid!r} (comments {first[rid]} and {k}); "
                               f"a submission needs one row per id")


def write_submission(path, ids, labels, probs):
    """Kaggle's format: id + one probability column per label, written atomically (evaluate.py's)."""
    from checkpoint import atomic_write
    atomic_write(path, lambda f: write_rows(f, labels, [(ids, probs)]), mode="w")


def write_rows(f, labels, parts):
    """The submission CSV, from (ids, probs) parts as they come."""
    import csv
    w = csv.writer(f)
    w.writerow(["id", *labels])
    for ids, probs in parts:
        w.writerows([rid, *(f"{p:.9g}" for p in row)] for rid, row in zip(ids, probs))


def stream(clf, has_ids, first, items, seen, args, thresholds):
    """Score and print the first block, then read, score and print a block at a time, in input order ->
    (ids, probs) per block, for the submission file. Nothing is kept from one block to the next but the
    ids seen (seen), when a submission needs them unique."""
    from inputs import blocks
    done, t0, widths = 0, time.time(), None
    for block in itertools.chain([first], blocks(items, BLOCK)):
        ids, texts = [rid for rid, _ in block], [t for _, t in block]
        if args.out and has_ids and done:  # the first block was checked before the model was loaded
            check_unique(ids, seen, done, args.file or "arguments")
        results = clf.predict(texts, args.policy, thresholds, batch_size=args.batch_size, progress=len(first) < BLOCK)
        if args.json:
            print_json(ids, texts, results, done, with_ids=has_ids)
        elif not args.out:
            widths = print_table(clf.labels, ids, texts, results, widths)
        done += len(block)
        if len(first) == BLOCK:  # a long input: say how far it is
            print(f"scored {done:,} comments in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        yield ids, [[r["scores"][n] for n in clf.labels] for r in results]


def cli_thresholds(meta, args):
    """--policy, --threshold and --thresholds checked against the export (errors name the flag) -> the
    thresholds argument of Classifier.predict: None (the policy's), or {label: x} for every label."""
    from classifier import CLI_NAMES, PolicyError, parse_named, resolve_thresholds
    try:
        every = None if args.threshold is None else float(args.threshold)
    except ValueError:
        raise PolicyError(f"--threshold: {args.threshold!r} is not a number in [0, 1]") from None
    named = None if args.thresholds is None else parse_named(args.thresholds)
    th = resolve_thresholds(meta, args.policy, every, named, CLI_NAMES)
    return None if every is None and named is None else dict(zip(meta["labels"], th))


# ----------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description="Score comments with an exported model (see the docstring).")
    p.add_argument("comments", nargs="*", help="comments to score; '-' reads stdin, one comment per line")
    p.add_argument("--file", help=".txt (one per line), .csv (comment_text[, id]), .jsonl (text[, id]) or -")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.add_argument("--out", help="also write a Kaggle submission CSV (id + 6 label columns)")
    p.add_argument("--model", help="export folder (default: the newest under exports/)")
    p.add_argument("--runtime", default="auto", help="auto (the fastest for this CPU), openvino, onnxruntime-int8 "
                                                     "or onnxruntime-fp32")
    p.add_argument("--policy", help="a decision policy of export.json (f1, precision, recall; default: its "
                                    "default_policy, or its thresholds in exports without policies)")
    p.add_argument("--threshold", help="one threshold for every label, over the policy's")
    p.add_argument("--thresholds", help="label=X,... for the labels named, over --threshold and the policy")
    p.add_argument("--batch_size", type=int, default=32, help="windows per model call at most (long windows: fewer, "
                                                               "MAX_TOKENS padded tokens a call)")
    args = p.parse_args(argv)
    if not args.comments and not args.file:
        p.print_usage(sys.stderr)
        print("error: nothing to score: give comments, '-' for stdin, or --file PATH", file=sys.stderr)
        sys.exit(2)
    # numpy's BLAS is not used here (onnxruntime has its own); one BLAS thread instead of a pool of
    # them saves about 0.06 s of every cold start.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if hasattr(sys.stdout, "reconfigure"):  # a terminal that cannot show an emoji gets '?', not a crash
        sys.stdout.reconfigure(errors="replace")
    with exit_on_error():
        if args.batch_size < 1:
            raise PredictError(f"--batch_size must be >= 1, got {args.batch_size}")
        model_dir = args.model or newest_export()
        thresholds = cli_thresholds(read_meta(model_dir), args)  # a bad folder or flag fails before the input is read
        from inputs import read_comments
        has_ids, items = read_comments(args.comments, args.file)
        first, seen = list(itertools.islice(items, BLOCK)), {}  # bad input fails before the model loads
        if args.out and has_ids:
            check_unique([rid for rid, _ in first], seen, 0, args.file or "arguments")
        small = len(first) < BLOCK and sum(len(t) for _, t in first) <= SMALL_JOB_CHARS  # the whole input
        from classifier import Classifier
        clf = Classifier(model_dir, args.runtime, small_job=small)
        print(f"model: {clf.path} on {clf.runtime} ({clf.why})", file=sys.stderr)
        parts = stream(clf, has_ids, first, items, seen, args, thresholds)
        if args.out:  # written as it goes, published when whole: a failure leaves no half file
            from checkpoint import atomic_write
            atomic_write(args.out, lambda f: write_rows(f, clf.labels, parts), mode="w")
            print(f"wrote {args.out}", file=sys.stderr)
        else:
            for _ in parts:
                pass
        sys.stdout.flush()


if __name__ == "__main__":
    main()
