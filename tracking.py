"""Experiment tracking in Aim, behind one small object; NullTracker when tracking is off.

    with make_tracker(enabled=True, repo="runs", experiment="mini", hparams={...}) as tracker:
        tracker.track("loss", 0.31, step=100, subset="train")   # closed on every way out of the block
Browse with:  aim up --repo runs

Problems with the repo (not writable, a run held by a live process) raise TrackingError before
training starts (prepare_repo); a failure mid-run warns once and training goes on untracked. A run
left open by a killed process (still 'active' in the UI) is closed by the next start in its out_dir.
"""
import json
import os
import sys
import tempfile

from common import UsageError


class TrackingError(UsageError):
    """The Aim repo cannot be used: raised before training starts, with the folder named."""


class Closing:
    """`with tracker:` closes it on every way out, so a run never stays 'active' and locked in Aim."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class NullTracker(Closing):
    """Stands in when tracking is off (or on non-zero ranks), so log sites never branch."""
    hash = None

    def track(self, name, value, step, subset):
        pass

    def close(self):
        pass


class AimTracker(Closing):
    """One Aim run. A tracking failure mid-run warns once and then goes quiet: it never kills training."""

    def __init__(self, repo, experiment, hparams, run_hash=None):
        import aim  # imported here: ~1.5 s that runs without tracking should not pay
        from aim.sdk.errors import MissingRunError

        check_repo(repo)
        if run_hash and held_by_live_process(repo, run_hash):
            raise TrackingError(in_use(repo, run_hash))
        try:
            try:
                self.run = aim.Run(run_hash=run_hash, repo=repo, experiment=experiment)
            except MissingRunError:  # the repo was moved or cleaned: the curves restart, training does not stop
                print(f"warning: aim repo {repo}: run {run_hash} (from last.pt) is not there; tracking to a new run")
                run_hash = None
                self.run = aim.Run(repo=repo, experiment=experiment)
            # on resume too: the run then describes the config it finishes with, as run.json does
            self.run["hparams"] = hparams
        except Exception as e:
            raise TrackingError(open_error(repo, run_hash, e)) from None
        self.hash = self.run.hash
        self.failed = False

    def _guard(self, fn, *args, **kwargs):
        if self.failed:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:
            self.failed = True
            print(f"warning: aim tracking failed ({type(e).__name__}: {e}); training goes on untracked",
                  file=sys.stderr)

    def track(self, name, value, step, subset):
        if value == value:  # nan (an undefined AUC) is left out, not logged as a number
            self._guard(self.run.track, float(value), name=name, step=step, context={"subset": subset})

    def close(self):
        # Even after a failure: closing releases the run's lock and ends it, else it stays 'active'.
        try:
            self.run.close()
        except Exception as e:
            if not self.failed:
                print(f"warning: aim run {self.hash} did not close cleanly ({type(e).__name__}: {e})",
                      file=sys.stderr)
            self.failed = True


def open_error(repo, run_hash, e):
    if run_hash and "lock" in str(e).lower():
        return in_use(repo, run_hash)
    return f"aim repo {repo}: cannot open a run ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def in_use(repo, run_hash):
    return (f"aim repo {repo}: run {run_hash} is open in another live process; "
            f"is another training writing to the same out_dir?")


def prepare_repo(repo, run_json, resume_hash=None):
    """Before training starts: the repo must be writable, a run to resume must not be open in a live
    process, and the previous attempt's run (run.json), if a killed process left it open, is closed."""
    check_repo(repo)
    if resume_hash and held_by_live_process(repo, resume_hash):
        raise TrackingError(in_use(repo, resume_hash))
    previous = previous_run(run_json, repo)
    if previous and previous != resume_hash:
        close_left_open(repo, previous)


def check_repo(repo):
    """Fail early and clearly when the repo cannot be written. A real write, not os.access: root
    passes every permission check, while read-only mounts and odd paths do not."""
    aim_dir = os.path.join(repo, ".aim")
    try:
        os.makedirs(repo, exist_ok=True)
        for folder in (repo, aim_dir) if os.path.lexists(aim_dir) else (repo,):
            tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise TrackingError(f"aim repo {repo}: cannot write there ({e.strerror}); set \"aim_repo\" elsewhere "
                            f"or \"aim\": false") from None


def held_by_live_process(repo, run_hash):
    """Whether a live process has the run open. RocksDB holds an fcntl lock on the run's LOCK file
    while it is open and the kernel drops it when the process dies, so unlike Aim's soft lock file
    this never mistakes a killed process for a live one (or, with pids reused, the reverse).
    Probing first matters: a failed aim.Run on a live run removes that run's soft lock."""
    import fcntl
    try:
        fd = os.open(os.path.join(repo, ".aim", "meta", "chunks", run_hash, "LOCK"), os.O_RDWR)  # Aim 3.29 layout
    except OSError:
        return False  # no such run here
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases our probe's lock


def close_left_open(repo, run_hash):
    """Close a run whose process was killed. Aim 3.29 keeps REPO/.aim/locks/<hash>.softlock until a
    run is closed; reopening clears a dead process's lock and closing sets the run's end time."""
    if not os.path.exists(os.path.join(repo, ".aim", "locks", f"{run_hash}.softlock")):
        return  # closed cleanly, or not in this repo
    if held_by_live_process(repo, run_hash):
        raise TrackingError(in_use(repo, run_hash))
    import aim
    from aim.sdk.errors import MissingRunError
    try:
        aim.Run(run_hash=run_hash, repo=repo).close()
    except MissingRunError:
        return
    except Exception as e:
        raise TrackingError(open_error(repo, run_hash, e)) from None
    print(f"aim: closed run {run_hash}, left open by a training that was killed")


def previous_run(run_json, repo):
    """The Aim run hash in an earlier attempt's run.json, if it tracked to this repo; None otherwise
    (a missing or damaged run.json is only a lost hint, never an error)."""
    try:
        with open(run_json) as f:
            info = json.load(f)
        return info["aim_hash"] if info.get("aim_repo") == repo else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def make_tracker(enabled, repo, experiment, hparams, run_hash=None):
    return AimTracker(repo, experiment, hparams, run_hash) if enabled else NullTracker()
