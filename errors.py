"""The exit codes every script shares, the one place that turns an error into one line and a code, and the
signal handling that lets training stop cleanly.

    from errors import UsageError, exit_on_error
    def main(argv=None):
        with exit_on_error():
            ...                                   # raise UsageError("--flag: why"), or let OSError out
    with stop_on_signals() as caught: ...         # train.py's loop: a signal marks a stop, taken between steps

    0         done
    2         bad usage or input: a flag, a config key, a data file, a checkpoint, a model folder
    3         numerical failure: training gave non-finite steps max_bad_steps times in a row
    4         file-system error: a write failed (disk full, permission denied, read-only folder)
    128 + N   stopped by signal N: 130 Ctrl-C, 143 SIGTERM (training writes last.pt first), 141 when the
              reader of the output went away (SIGPIPE, e.g. `predict.py ... | head`)
No torch here: predict.py and export.py import it before they know they need torch.
"""
import os
import signal
import sys
from contextlib import contextmanager

EXIT_USAGE, EXIT_NUMERICAL, EXIT_FILESYSTEM = 2, 3, 4


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
