"""Experiment tracking in Aim, behind one small object; NullTracker when tracking is off.

    tracker = make_tracker(enabled=True, repo="runs", experiment="mini", hparams={...})
    tracker.track("loss", 0.31, step=100, subset="train")
    tracker.close()
Browse with:  aim up --repo runs
"""
import os
import sys


class TrackingError(RuntimeError):
    """The Aim repo cannot be used: raised before training starts, with the folder named."""


class NullTracker:
    """Stands in when tracking is off (or on non-zero ranks), so log sites never branch."""
    hash = None

    def track(self, name, value, step, subset):
        pass

    def log_figure(self, name, figure):
        pass

    def close(self):
        pass


class AimTracker:
    """One Aim run. A tracking failure mid-run warns once and then goes quiet: it never kills training."""

    def __init__(self, repo, experiment, hparams, run_hash=None):
        import aim  # imported here: ~1.5 s that runs without tracking should not pay

        check_repo(repo)
        try:
            self.run = aim.Run(run_hash=run_hash, repo=repo, experiment=experiment)
            if run_hash is None:
                self.run["hparams"] = hparams
        except Exception as e:
            raise TrackingError(f"aim repo {repo}: cannot open a run ({type(e).__name__}: {e})") from None
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

    def log_figure(self, name, figure):
        import aim
        self._guard(lambda: self.run.track(aim.Image(figure), name=name))

    def close(self):
        self._guard(self.run.close)


def check_repo(repo):
    """Fail early and clearly when the repo folder cannot be written."""
    try:
        os.makedirs(repo, exist_ok=True)
    except OSError as e:
        raise TrackingError(f"aim repo {repo}: cannot create the folder ({e.strerror})") from None
    if not os.access(repo, os.W_OK | os.X_OK) or (
            os.path.isdir(os.path.join(repo, ".aim")) and not os.access(os.path.join(repo, ".aim"), os.W_OK)):
        raise TrackingError(f"aim repo {repo}: folder is not writable; set \"aim_repo\" elsewhere "
                            f"or \"aim\": false")


def make_tracker(enabled, repo, experiment, hparams, run_hash=None):
    return AimTracker(repo, experiment, hparams, run_hash) if enabled else NullTracker()
