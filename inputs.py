"""Reading text as a stream: lines and CSV records of any file (data.py's Kaggle reader is built on them), and
the comments predict.py scores, from the command line, stdin ('-') or a file, in blocks.

    from inputs import read_comments, blocks, read_rows
    for where, row in read_rows("train.csv", ("id", "comment_text")): ...   # where: 'row 3 (line 5)'

    has_ids, items = read_comments(["you are an idiot"], None)    # items: (id, text) pairs, lazily
    for block in blocks(items, 2048): ...                          # lists of at most 2048 pairs
--file reads .csv (comment_text, id if present), .jsonl/.ndjson (`text` or `comment_text`, `id` if
present) and anything else as one comment per line (a blank line is an empty comment: rows match
lines). Files are read a line at a time, so a file of any size takes the memory of one block.
Invalid UTF-8 is replaced with U+FFFD and counted in a warning on stderr once the input is read.
"""
import contextlib
import csv
import io
import itertools
import json
import os
import sys

from common import UsageError

csv.field_size_limit(2**31 - 1)  # real comments can be megabytes long


class InputError(UsageError):
    """Input that cannot be read or scored: the message names the file, and the row, line or column."""


# ----------------------------------------------------------------------------
# lines and CSV records

def read_lines(path):
    """Lines of a file, or of stdin for "-", one at a time -> (line with its end, n invalid UTF-8 sequences
    replaced with U+FFFD). UTF-8 never puts byte 0x0A inside a character, so decoding line by line gives
    exactly what decoding the whole file would, in the memory of one line."""
    try:
        f = sys.stdin.buffer if path == "-" else open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    with f if path != "-" else contextlib.nullcontext():
        first = True
        for raw in f:
            yield decode_bytes(raw) if first else decode_bytes(raw, bom=False)
            first = False


def decode_bytes(raw, bom=True):
    """Bytes -> (text, n invalid UTF-8 sequences replaced with U+FFFD); a leading BOM is dropped."""
    codec = "utf-8-sig" if bom else "utf-8"
    try:
        return raw.decode(codec), 0
    except UnicodeDecodeError:
        text = raw.decode(codec, errors="replace")
        return text, text.count("\ufffd") - raw.decode(codec, errors="ignore").count("\ufffd")


def read_rows(path, required, header_only=False):
    """Yield (where, dict) per CSV record, reading the file as it goes; where reads 'row 3 (line 5)', the
    header being row 1. header_only yields the header's column names alone, so its errors come at once."""
    bad = [0]  # invalid UTF-8 sequences replaced, counted as the lines go by

    def lines():  # split again at a lone \r too, as a whole-file reader with newline="" would
        for line, n in read_lines(path):
            bad[0] += n
            yield from io.StringIO(line, newline="")
    reader = csv.reader(lines())
    try:
        yield from _records(path, reader, required, header_only)
    except csv.Error as e:  # e.g. a NUL byte, or a quote left open at the end of the file
        raise InputError(f"{path}: line {reader.line_num}: not valid CSV ({e})") from None
    if bad[0]:
        print(f"warning: {path}: {bad[0]} invalid UTF-8 byte sequence(s) replaced with U+FFFD", file=sys.stderr)


def _records(path, reader, required, header_only):
    header = next((row for row in reader if any(c.strip() for c in row)), None)
    if header is None:
        raise InputError(f"{path}: file is empty")
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    twice = sorted({c for c in required if header.count(c) > 1})  # which copy is meant cannot be known
    if twice:
        raise InputError(f"{path}: row 1 (header): column(s) {', '.join(twice)} appear more than once")
    if missing:
        raise InputError(f"{path}: row 1 (header): missing column(s) {', '.join(missing)}; "
                        f"found {', '.join(header)}")
    if header_only:
        yield header
        return
    line, number = reader.line_num + 1, 1  # quoted newlines make records span several lines
    for row in reader:
        where, line = f"row {number + 1} (line {line})", reader.line_num + 1
        if not row:
            continue  # a blank line is not a record
        number += 1
        if len(row) != len(header):
            raise InputError(f"{path}: {where}: expected {len(header)} fields, got {len(row)}")
        yield where, dict(zip(header, row))



# ----------------------------------------------------------------------------
# the comments to score


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
