"""The comments predict.py scores, read as a stream: from the command line, stdin ('-') or a file, in blocks.

    from inputs import read_comments, blocks
    has_ids, items = read_comments(["you are an idiot"], None)    # items: (id, text) pairs, lazily
    for block in blocks(items, 2048): ...                          # lists of at most 2048 pairs
--file reads .csv (comment_text, id if present), .jsonl/.ndjson (`text` or `comment_text`, `id` if
present) and anything else as one comment per line (a blank line is an empty comment: rows match
lines). Files are read a line at a time, so a file of any size takes the memory of one block.
Invalid UTF-8 is replaced with U+FFFD and counted in a warning on stderr once the input is read.
"""
import itertools
import json
import os
import sys

from data import decode_bytes, read_lines, read_rows
from errors import UsageError


class InputError(UsageError):
    """Input that cannot be scored: the message names the file and line."""


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
            return decode_bytes(s.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:  # unpaired surrogates proper: one U+FFFD each
            t = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in s)
            return t, t.count("\ufffd") - s.count("\ufffd")


def text_lines(path, name):
    """One comment per line: the line without its end ('\\n' only: not splitlines(), which also splits
    at form feeds and U+2028), its id the line's index. Warns of replaced bytes at the end."""
    bad, seen_text = 0, False
    for i, (line, n) in enumerate(read_lines(path)):
        bad += n
        line = line[:-1] if line.endswith("\n") else line
        line = line[:-1] if line.endswith("\r") else line
        seen_text = seen_text or bool(line.strip())
        yield str(i), line
    warn_replaced(bad, name)
    if not seen_text:
        raise InputError(f"{name}: empty, no comments to score")


def jsonl_lines(path, name):
    bad, bad_bytes, index = 0, 0, 0
    for n, (line, replaced) in enumerate(read_lines(path), 1):
        bad_bytes += replaced
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:
            why = getattr(e, "msg", "nested too deep")
            raise InputError(f"{name}: line {n}: not valid JSON ({why})") from None
        t = obj.get("text", obj.get("comment_text")) if isinstance(obj, dict) else None
        if not isinstance(t, str):
            raise InputError(f"{name}: line {n}: expected an object with a string 'text' or 'comment_text'")
        t, b = valid_unicode(t)
        bad += b
        yield (str(obj["id"]) if obj.get("id") is not None else str(index)), t  # or its index
        index += 1
    warn_replaced(bad_bytes, name)
    warn_replaced(bad, name, "unpaired surrogate escape(s)")
    if not index:
        raise InputError(f"{name}: empty, no comments to score")


def csv_rows(path, has_ids):
    index = 0
    for _, row in read_rows(path, ("comment_text",)):
        yield (row["id"] if has_ids else str(index)), row["comment_text"]
        index += 1
    if not index:
        raise InputError(f"{path}: header only, no comments")


def read_comments(comments, path):
    """-> (has_ids, iterator of (id, text)). Without ids of their own, a comment's id is its index.
    Errors in the input (one line naming the file and line) are raised as the stream reaches them."""
    if comments and path:
        raise InputError("give comments or --file, not both")
    if path is None and comments != ["-"]:
        pairs = [valid_unicode(c) for c in comments]
        warn_replaced(sum(b for _, b in pairs), "arguments")
        return False, iter([(str(i), t) for i, (t, _) in enumerate(pairs)])
    path = path or "-"
    name, ext = ("stdin" if path == "-" else path), os.path.splitext(path)[1].lower()
    if ext == ".csv":
        header = next(read_rows(path, ("comment_text",), header_only=True))  # errors in the header now
        return "id" in header, csv_rows(path, "id" in header)
    if ext in (".jsonl", ".ndjson"):
        return True, jsonl_lines(path, name)
    return False, text_lines(path, name)


def blocks(items, size):
    """Consecutive lists of at most size items: read, score and write one at a time."""
    while True:
        block = list(itertools.islice(items, size))
        if not block:
            return
        yield block
