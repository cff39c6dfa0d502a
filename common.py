"""The names every module shares, and nothing else: the bottom layer, stdlib and numpy only.

    from common import LABELS, UsageError, atomic_write, exit_on_error, sigmoid
    def main(argv=None):
        with exit_on_error():
            ...                                   # raise UsageError("--flag: why"), or let OSError out
    atomic_write("out.json", lambda f: f.write(text), mode="w")   # every file the project writes
    with stop_on_signals() as caught: ...         # train.py's loop: a signal marks a stop, taken between steps

Exit codes:
    0         done
    2         bad usage or input: a flag, a config key, a data file, a checkpoint, a model folder
    3         numerical failure: training gave non-finite steps max_bad_steps times in a row
    4         file-system error: a write failed (disk full, permission denied, read-only folder)
    128 + N   stopped by signal N: 130 Ctrl-C, 143 SIGTERM (training writes last.pt first), 141 when the
              reader of the output went away (SIGPIPE, e.g. `predict.py ... | head`)
"""
import errno
import os
import shutil
import signal
import sys
from contextlib import contextmanager

import numpy as np

# The default label set: Kaggle's Jigsaw 2018 columns, in its order. A new run trains these; everything after
# training reads the labels from the checkpoint or export.json.
LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
POOLINGS = ("cls", "mean")
# The project's own identity and functional sets (evaluation) and the templates and terms training may use:
# data/make_fairness.py and data/fairness/README.md say which is which.
FAIRNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "fairness")
EXIT_USAGE, EXIT_NUMERICAL, EXIT_FILESYSTEM = 2, 3, 4


def sigmoid(z):
    """Logits -> probabilities in float64, without overflow warnings for large |z|."""
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0, -z))


def first_line(e):
    """An exception's first line of text, or its type's name: errors are one line."""
    return str(e).splitlines()[0] if str(e).strip() else type(e).__name__


def markdown_table(header, rows):
    """A Markdown table as a list of lines."""
    return (["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


# ----------------------------------------------------------------------------
# errors and exit codes


class UsageError(Exception):
    """Bad usage or input. The message names the file, row, key or flag; main prints it as one line."""


class Stopped(Exception):
    """Work stopped on purpose (a signal, non-finite steps, a failed write), with the exit code to use."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def signal_code(signum):
    return 128 + signum


@contextmanager
def exit_on_error():
    """Every script's main runs inside this: a known error prints `error: ...` or `stopped: ...` on
    stderr and exits with the table's code, never a traceback. Anything else is a bug, and is raised."""
    try:
        yield
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except Stopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(e.code)
    except BrokenPipeError:  # `script ... | head`: the reader left. Exit as a process killed by SIGPIPE does,
        # never 0: what was not written was not done (a training stops without its last.pt)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        sys.exit(signal_code(signal.SIGPIPE))
    except OSError as e:  # disk full, permissions: the file named
        print(f"error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        sys.exit(EXIT_FILESYSTEM)
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM, see sigterm_as_interrupt) outside a training's own handler
        print("stopped: interrupted", file=sys.stderr)
        sys.exit(signal_code(signal.SIGINT))


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, until the block ends: one line, no traceback."""
    old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def stop_on_signals():
    """Ctrl-C and SIGTERM only mark a stop, which the loop takes between steps (finish the step, write
    last.pt, exit 128 + the signal); a second one stops at once. The caller's handlers come back after."""
    caught = []

    def on_signal(signum, frame):
        caught.append(signum)
        signal.signal(signum, signal.SIG_DFL)
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


# ----------------------------------------------------------------------------
# one atomic write for every file the project writes


def fsync_dir(path):
    """Make a rename in folder `path` durable: without it a power cut can undo the rename. File systems
    that cannot sync a folder (some network and FUSE ones) say EINVAL: the rename stands all the same."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def atomic_write(path, write, mode="wb", unique=False):
    """write(f) into a temporary file beside path, fsync it, rename it over path, fsync the folder.

    A crash or kill at any moment leaves either the old file whole or the new one whole, never half
    of one. The temporary is path + ".tmp" (a kill leaves at most that one, which the next write
    replaces); unique=True gives it a random name, for files several processes may write at once (the
    token cache, on every rank). On failure the temporary is removed, and a system error on it is raised
    naming path, the file the user knows."""
    tmp = f"{path}.{os.urandom(6).hex()}.tmp" if unique else f"{path}.tmp"
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
            raise OSError(e.errno, e.strerror, path) from None
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def publish_dir(tmp, out):
    """atomic_write for a folder: fsync every file in the finished folder tmp, then swap it in for out (an
    older folder of that name is moved aside, then removed) and fsync the parent. A kill leaves out whole,
    old or new, except between the two renames, where the old one waits as tmp + ".old"."""
    for name in os.listdir(tmp):
        with open(os.path.join(tmp, name), "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(tmp)
    old = f"{tmp}.old"
    shutil.rmtree(old, ignore_errors=True)  # left by a killed export
    had_old = os.path.exists(out)
    if had_old:
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(os.path.dirname(os.path.abspath(out)))
    if had_old:
        shutil.rmtree(old)
