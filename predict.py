"""Score comments with a model exported by export.py: onnxruntime, tokenizers and numpy; no torch.

    python predict.py "you are an idiot" "thanks for the edit"     # a table: 6 probabilities + labels
    python predict.py --json "you are an idiot"                    # one JSON object per line
    python predict.py --file comments.txt                          # one comment per line
    cat comments.txt | python predict.py -                         # the same from stdin
    python predict.py --file test.csv --out submission.csv         # Kaggle submission: id + 6 labels
    python predict.py --model exports/mini --fp32 --file comments.jsonl

--file reads .csv (comment_text, id if present), .jsonl (`text` or `comment_text`, `id` if present)
and anything else as one comment per line (a blank line is an empty comment: rows match lines); `-`
reads stdin the same way. Invalid UTF-8 is replaced with U+FFFD and counted in a warning.
--model DIR: an export folder, by default the newest under exports/. Its int8 model is used when it
has one (the recommended CPU model, see export.py); --fp32 forces fp32. Output: probabilities in
Kaggle's label order and the labels at or above the export's per-label thresholds (tuned on
validation). With --out and no --json, only the file is written.

Long comments are not truncated. The whole comment is tokenized and cut into windows of max_length
tokens ([CLS] + max_length-2 tokens + [SEP]); consecutive windows share a quarter of their tokens
(so a phrase that long is always seen whole), the last window ends at the comment's end, and each
label takes the max over the comment's windows (toxic anywhere means toxic). A comment that fits is
a single window, exactly what training saw. int8 scores can move by about 1e-3 with the batch a
window lands in (activations are quantized per batch); fp32 scores do not depend on the batch.
"""
import argparse
import json
import os
import sys
import time
from types import SimpleNamespace

from errors import UsageError, exit_on_error

FORMAT_VERSION = 1  # of export.json; export.py writes it, predict.py refuses any other
META_KEYS = ("labels", "max_length", "thresholds", "models", "tokenizer", "prefix_ids", "suffix_ids", "pad_id")
OVERLAP = 4  # consecutive windows share 1/OVERLAP of their tokens
PIECE_CHARS = 1 << 15  # huge comments are tokenized in pieces cut at spaces: same ids, 10x less memory
ENCODE_CHARS = 1 << 19  # characters per tokenizer call: bounds the memory of its Encoding objects
PROGRESS_MIN = 256  # windows; below this a progress bar is noise


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


def physical_cores():
    """Distinct cores among the CPUs we may run on (hyperthreads share one core's matmul units),
    capped by a container's CPU quota: more threads than that only wait for each other."""
    try:
        topo = "/sys/devices/system/cpu/cpu{}/topology/{}"
        n = len({(open(topo.format(c, "physical_package_id")).read(), open(topo.format(c, "core_id")).read())
                 for c in os.sched_getaffinity(0)})
    except (OSError, AttributeError):  # not Linux
        return os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        return max(1, min(n, -(-int(quota) // int(period)))) if quota != "max" else n
    except (OSError, ValueError):  # cgroup v1 or none
        return n


def load_model(model_dir, fp32=False):
    """-> namespace(meta, kind, path, labels, thresholds, tokenizer, session). The imports are here."""
    meta = read_meta(model_dir)
    kind = "fp32" if fp32 else meta.get("default_model", "fp32")  # export.py: int8 when it wrote one
    if kind not in meta["models"]:
        raise PredictError(f"{model_dir}/export.json: no {kind} model listed in models")
    path = os.path.join(model_dir, meta["models"][kind])
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = physical_cores()
    opts.inter_op_num_threads = 1  # one branch at a time: BERT's graph is a chain
    try:  # missing or corrupt files: one line, whatever the library's error type
        tokenizer = Tokenizer.from_file(os.path.join(model_dir, meta["tokenizer"]))
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise PredictError(f"{model_dir}: cannot load {meta['tokenizer']} or {meta['models'][kind]} "
                           f"({first_line(e)})") from None
    labels = list(meta["labels"])
    return SimpleNamespace(meta=meta, kind=kind, path=path, labels=labels, tokenizer=tokenizer, session=session,
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


def encode_texts(tokenizer, texts):
    """Token ids of each text, no special tokens, nothing truncated -> list of int32 arrays."""
    import numpy as np
    pieces = [(i, p) for i, t in enumerate(texts) for p in split_text(t)]
    parts, g = [[] for _ in texts], 0
    while g < len(pieces):
        n, chars = 1, len(pieces[g][1])
        while g + n < len(pieces) and chars + len(pieces[g + n][1]) <= ENCODE_CHARS:
            chars, n = chars + len(pieces[g + n][1]), n + 1
        encs = tokenizer.encode_batch([p for _, p in pieces[g:g + n]], add_special_tokens=False)
        for (i, _), enc in zip(pieces[g:g + n], encs):
            parts[i].append(np.array(enc.ids, dtype=np.int32))
        g += n
    return [p[0] if len(p) == 1 else np.concatenate(p) for p in parts]


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


def score(model, texts, batch_size=32, progress=True):
    """Probabilities (len(texts), 6) float32 in model.labels order, each the max over the comment's
    windows. Windows are batched across comments, sorted by length; the order of texts is kept."""
    import numpy as np

    from data import sorted_batches
    m = model.meta
    seqs = encode_texts(model.tokenizer, texts)
    windows = make_windows(seqs, m["max_length"] - len(m["prefix_ids"]) - len(m["suffix_ids"]))
    owner, start, end = windows
    out = np.zeros((len(texts), len(model.labels)), dtype=np.float32)
    show = progress_bar(len(owner)) if progress and len(owner) >= PROGRESS_MIN else None
    for done, b in enumerate(sorted_batches(end - start, batch_size)):
        ids, mask = window_batch(seqs, windows, b, m["prefix_ids"], m["suffix_ids"], m["pad_id"])
        probs = model.session.run(["probs"], {"input_ids": ids, "attention_mask": mask})[0]  # (B,6)
        np.maximum.at(out, owner[b], probs)  # probabilities are >= 0: the max from zeros is the max
        if show:
            show(min((done + 1) * batch_size, len(owner)))
    return out


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
# input

def warn_replaced(n, where, what="invalid UTF-8 byte sequence(s)"):
    if n:
        print(f"warning: {where}: {n} {what} replaced with U+FFFD", file=sys.stderr)


def valid_unicode(s):
    """-> (text, n replaced). Lone surrogates (argv's undecodable bytes, JSON's \\ud800 escapes)
    become U+FFFD: the tokenizer cannot take them."""
    try:
        s.encode("utf-8")
        return s, 0
    except UnicodeEncodeError:
        try:  # argv's undecodable bytes: back to bytes, decoded as files are
            from data import decode_bytes
            return decode_bytes(s.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:  # unpaired surrogates proper: one U+FFFD each
            t = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in s)
            return t, t.count("\ufffd") - s.count("\ufffd")


def read_jsonl(text, name):
    ids, texts, bad = [], [], 0
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:
            why = getattr(e, "msg", "nested too deep")
            raise PredictError(f"{name}: line {n}: not valid JSON ({why})") from None
        t = obj.get("text", obj.get("comment_text")) if isinstance(obj, dict) else None
        if not isinstance(t, str):
            raise PredictError(f"{name}: line {n}: expected an object with a string 'text' or 'comment_text'")
        t, b = valid_unicode(t)
        bad += b
        ids.append(str(obj["id"]) if obj.get("id") is not None else str(len(texts)))  # or its index
        texts.append(t)
    warn_replaced(bad, name, "unpaired surrogate escape(s)")
    return ids, texts


def read_inputs(comments, path):
    """-> (ids or None, texts) from the command line, stdin ('-') or a file."""
    from contextlib import redirect_stdout

    from data import decode_bytes, read_rows, read_text
    if comments and path:
        raise PredictError("give comments or --file, not both")
    if path is None and comments != ["-"]:
        pairs = [valid_unicode(c) for c in comments]
        warn_replaced(sum(b for _, b in pairs), "arguments")
        return None, [t for t, _ in pairs]
    path = path or "-"
    name, ext = ("stdin" if path == "-" else path), os.path.splitext(path)[1].lower()
    if ext == ".csv":
        with redirect_stdout(sys.stderr):  # read_rows warns on stdout, which here is our output
            rows = [row for _, row in read_rows(path, ("comment_text",))]
        if not rows:
            raise PredictError(f"{path}: header only, no comments")
        return ([r["id"] for r in rows] if "id" in rows[0] else None), [r["comment_text"] for r in rows]
    text, bad = decode_bytes(sys.stdin.buffer.read()) if path == "-" else read_text(path)
    warn_replaced(bad, name)
    if not text.strip():
        raise PredictError(f"{name}: empty, no comments to score")
    if ext in (".jsonl", ".ndjson"):
        return read_jsonl(text, name)
    lines = text.split("\n")  # not splitlines(), which also splits at form feeds and U+2028
    lines = lines[:-1] if lines[-1] == "" else lines
    return None, [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


# ----------------------------------------------------------------------------
# output

def decided(model, row):
    return [n for n, p, t in zip(model.labels, row, model.thresholds) if p >= t]


def preview(text, room):
    """The comment on one terminal line: whitespace collapsed, control characters shown as '?'."""
    head = "".join(c if c.isprintable() else "?" for c in " ".join(text[:room * 4].split()))
    return head if len(head) <= room and len(text) <= room * 4 else head[:max(room - 3, 1)] + "..."


def print_table(model, ids, texts, probs):
    import shutil
    names = ids or [str(i) for i in range(len(texts))]
    cols = [max(len(n), 5) for n in model.labels]
    found = [", ".join(decided(model, row)) or "-" for row in probs]
    iw, lw = max(1, *map(len, names)), max(len("labels"), *map(len, found))
    room = max(20, shutil.get_terminal_size().columns - iw - sum(cols) - 2 * len(cols) - lw - 6)
    head = "  ".join(f"{n:>{w}}" for n, w in zip(model.labels, cols))
    print(f"{'#':>{iw}}  {head}  {'labels':<{lw}}  comment")
    for name, row, labels, text in zip(names, probs, found, texts):
        print(f"{name:>{iw}}  " + "  ".join(f"{p:>{w}.3f}" for p, w in zip(row, cols))
              + f"  {labels:<{lw}}  {preview(text, room)}")


def print_json(model, ids, texts, probs):
    ascii_only = (sys.stdout.encoding or "").lower().replace("-", "") != "utf8"  # else \u escapes
    for i, (text, row) in enumerate(zip(texts, probs)):
        obj = {"index": i} if ids is None else {"index": i, "id": ids[i]}
        obj.update(text=text, scores={n: round(float(p), 6) for n, p in zip(model.labels, row)},
                   labels=decided(model, row))
        line = json.dumps(obj, ensure_ascii=ascii_only)
        for c in "\u2028\u2029\x85":  # valid raw in JSON, but str.splitlines() breaks lines there
            line = line.replace(c, f"\\u{ord(c):04x}")
        print(line)


def submission_ids(ids, n, name):
    """The id column (the index without ids): one row per id, so a repeated one is refused."""
    first, ids = {}, ids or [str(i) for i in range(n)]
    k = next((k for k, rid in enumerate(ids, 1) if first.setdefault(rid, k) != k), None)
    if k:
        raise PredictError(f"{name}: duplicate id {ids[k - 1]!r} (comments {first[ids[k - 1]]} and {k}); "
                           f"a submission needs one row per id")
    return ids


def write_submission(path, ids, labels, probs):
    """Kaggle's format: id + one probability column per label. Written to a temporary file first."""
    import csv

    from checkpoint import atomic_write

    def write(f):
        w = csv.writer(f)
        w.writerow(["id", *labels])
        w.writerows([rid, *(f"{p:.9g}" for p in row)] for rid, row in zip(ids, probs))
    atomic_write(path, write, mode="w")


# ----------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description="Score comments with an exported model (see the docstring).")
    p.add_argument("comments", nargs="*", help="comments to score; '-' reads stdin, one comment per line")
    p.add_argument("--file", help=".txt (one per line), .csv (comment_text[, id]), .jsonl (text[, id]) or -")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.add_argument("--out", help="also write a Kaggle submission CSV (id + 6 label columns)")
    p.add_argument("--model", help="export folder (default: the newest under exports/)")
    p.add_argument("--fp32", action="store_true", help="use the fp32 model even when an int8 one exists")
    p.add_argument("--batch_size", type=int, default=32, help="windows per onnxruntime call")
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
        read_meta(model_dir)  # a bad folder fails before a big input is read
        ids, texts = read_inputs(args.comments, args.file)
        rows = submission_ids(ids, len(texts), args.file or "arguments") if args.out else None  # checked now
        model = load_model(model_dir, args.fp32)
        print(f"model: {model.path} ({model.kind}), {len(texts)} comment(s)", file=sys.stderr)
        probs = score(model, texts, args.batch_size)
        if args.out:
            write_submission(args.out, rows, model.labels, probs)
            print(f"wrote {len(texts)} rows to {args.out}", file=sys.stderr)
        if args.json:
            print_json(model, ids, texts, probs)
        elif not args.out:
            print_table(model, ids, texts, probs)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
