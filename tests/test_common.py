"""errors.py: the one exit-code table, the one-line handler every main runs in, and the signal handling."""
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT
from errors import UsageError, Stopped, exit_on_error, stop_on_signals


@pytest.mark.parametrize("exc, code, line", [
    (UsageError("data.csv: row 3 (line 4), column toxic: label must be 0 or 1, got '2'"), 2,
     "error: data.csv: row 3 (line 4), column toxic: label must be 0 or 1, got '2'"),
    (Stopped("step 5: 3 consecutive non-finite steps; stopping.", 3), 3,
     "stopped: step 5: 3 consecutive non-finite steps; stopping."),
    (OSError(28, "No space left on device", "runs/mini/last.pt"), 4, "error: runs/mini/last.pt: No space left on device"),
    (KeyboardInterrupt(), 130, "stopped: interrupted")])
def test_each_error_is_one_line_and_its_code(capsys, exc, code, line):
    with pytest.raises(SystemExit) as e, exit_on_error():
        raise exc
    assert e.value.code == code and capsys.readouterr().err == line + "\n"


def test_a_bug_is_not_hidden():
    with pytest.raises(ZeroDivisionError), exit_on_error():
        1 / 0


def test_a_reader_that_leaves_gives_sigpipes_code_without_a_traceback():
    """`script | head`: what was not written was not done, so the exit is 141 (128 + SIGPIPE), never 0."""
    script = ("import sys; sys.path.insert(0, %r)\nfrom errors import exit_on_error\nwith exit_on_error():\n"
              "    for i in range(10**6):\n        print('line', i)\n" % ROOT)
    r = subprocess.run(f"{sys.executable} -c \"{script}\" | head -1; exit ${{PIPESTATUS[0]}}", shell=True,
                       executable="/bin/bash", capture_output=True, text=True)
    assert r.returncode == 128 + signal.SIGPIPE and r.stdout == "line 0\n" and "Traceback" not in r.stderr


def test_stop_on_signals_marks_the_stop_and_gives_the_handlers_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with stop_on_signals() as caught:
        os.kill(os.getpid(), signal.SIGTERM)  # handled at once, in this thread: the process goes on
        assert caught == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # a second one would stop at once
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
