"""Score comments with a model exported by export.py: OpenVINO or onnxruntime, tokenizers and numpy; no torch.

    python predict.py "you are an idiot" "thanks for the edit"     # a table: a probability per label + labels
    python predict.py --json "you are an idiot"                    # one JSON object per line
    python predict.py --file comments.txt                          # one comment per line
    cat comments.txt | python predict.py -                         # the same from stdin
    python predict.py --file test.csv --out submission.csv         # Kaggle submission: id + a column per label
    python predict.py --model exports/mini --runtime onnxruntime-fp32 --file comments.jsonl
    python predict.py --policy precision --thresholds threat=0.2 "I will find you"   # other decisions

--file reads .csv (comment_text, id if present), .jsonl (`text` or `comment_text`, `id` if present)
and anything else as one comment per line (a blank line is an empty comment: rows match lines); `-`
reads stdin the same way. Invalid UTF-8 is replaced with U+FFFD and counted in a warning.
--model DIR: an export folder, by default the newest under exports/. --runtime: by default the fastest
for this CPU (runtimes.py: OpenVINO in bf16 where the CPU has native bf16, else onnxruntime int8 when
the export has it, else fp32), said on stderr; a name forces one. Output: probabilities in
the export's label order and the labels at or above its default policy's thresholds (tuned on
validation; --policy, --threshold and --thresholds choose others, see classifier.py), and in --json
the span (character offsets) of the window behind each label. With --out and no --json, only the file
is written. The CLI is a layer over classifier.Classifier, the Python API.

Long comments are scored as overlapping windows, each label the max over them (scoring.py says how).
Input is read, scored and printed BLOCK comments at a time, and the
submission file is published whole at the end: an error in a later block (a bad line, a repeated id)
stops the run after the earlier blocks were printed, and leaves no submission.
"""
import argparse
import itertools
import json
import os
import shutil
import sys
import time

# numpy's BLAS is not used here (the runtimes have their own); one BLAS thread instead of a pool of them saves
# about 0.06 s of every cold start. Set before numpy loads, with the imports below.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from classifier import CLI_NAMES, Classifier, PolicyError, parse_named, resolve_thresholds
from common import UsageError, exit_on_error
from data import write_submission
from inputs import InputError, blocks, read_comments
from scoring import newest_export, read_meta

# An input of at most this many characters in all is a small job, for onnxruntime int8: OpenVINO starts
# 0.6 s later (0.95 s against 0.32 s for one comment) and won 0.7-2.1 ms a comment in two runs (84.6-93.9
# against 78.7-79.6 comments/s), so it pays from about 290-810 comments of the real data's mean 379
# characters (AVX-512 EPYC, bench/README.md): the lower end is taken.
SMALL_JOB_CHARS = 100_000
BLOCK = 2048  # comments read, scored and written at a time: a file of any length runs in bounded memory


# ----------------------------------------------------------------------------
# output

def preview(text, room):
    """The comment on one terminal line: whitespace collapsed, control characters shown as '?'."""
    head = "".join(c if c.isprintable() else "?" for c in " ".join(text[:room * 4].split()))
    return head if len(head) <= room and len(text) <= room * 4 else head[:max(room - 3, 1)] + "..."


def print_table(labels, ids, texts, results, widths=None):
    """The rows of one block; the first (widths None) prints the header and sizes the id and labels
    columns, and later blocks take its widths back, so the table stays in line -> the widths."""
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
            raise InputError(f"{name}: duplicate id {rid!r} (comments {first[rid]} and {k}); "
                               f"a submission needs one row per id")


def stream(clf, has_ids, first, items, seen, args, thresholds):
    """Score and print the first block, then read, score and print a block at a time, in input order ->
    (ids, probs) per block, for the submission file. Nothing is kept from one block to the next but the
    ids seen (seen), when a submission needs them unique."""
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
    p.add_argument("--out", help="also write a Kaggle submission CSV (id + a column per label)")
    p.add_argument("--model", help="export folder (default: the newest under exports/)")
    p.add_argument("--runtime", default="auto", help="auto (the fastest for this CPU), openvino, onnxruntime-int8 "
                                                     "or onnxruntime-fp32")
    p.add_argument("--policy", help="a decision policy of export.json (f1, precision, recall; default: its "
                                    "default_policy)")
    p.add_argument("--threshold", help="one threshold for every label, over the policy's")
    p.add_argument("--thresholds", help="label=X,... for the labels named, over --threshold and the policy")
    p.add_argument("--batch_size", type=int, default=32, help="windows per model call at most (long windows: fewer, "
                                                               "MAX_TOKENS padded tokens a call)")
    args = p.parse_args(argv)
    if not args.comments and not args.file:
        p.print_usage(sys.stderr)
        print("error: nothing to score: give comments, '-' for stdin, or --file PATH", file=sys.stderr)
        sys.exit(2)
    if hasattr(sys.stdout, "reconfigure"):  # a terminal that cannot show an emoji gets '?', not a crash
        sys.stdout.reconfigure(errors="replace")
    with exit_on_error():
        if args.batch_size < 1:
            raise UsageError(f"--batch_size must be >= 1, got {args.batch_size}")
        model_dir = args.model or newest_export()
        thresholds = cli_thresholds(read_meta(model_dir), args)  # a bad folder or flag fails before the input is read
        has_ids, items = read_comments(args.comments, args.file)
        first, seen = list(itertools.islice(items, BLOCK)), {}  # bad input fails before the model loads
        if args.out and has_ids:
            check_unique([rid for rid, _ in first], seen, 0, args.file or "arguments")
        small = len(first) < BLOCK and sum(len(t) for _, t in first) <= SMALL_JOB_CHARS  # the whole input
        clf = Classifier(model_dir, args.runtime, small_job=small)
        print(f"model: {clf.path} on {clf.runtime} ({clf.why})", file=sys.stderr)
        parts = stream(clf, has_ids, first, items, seen, args, thresholds)
        if args.out:  # written as it goes, published when whole: a failure leaves no half file
            write_submission(args.out, clf.labels, parts)
            print(f"wrote {args.out}", file=sys.stderr)
        else:
            for _ in parts:
                pass
        sys.stdout.flush()


if __name__ == "__main__":
    main()
