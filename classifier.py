"""The Python API: a model exported by export.py, scored without torch, one dict per comment.

    from classifier import Classifier
    clf = Classifier("exports/mini")                      # runtime="auto": the fastest for this CPU
    clf.predict(["you are an idiot", "thanks for the edit"])
    # [{"scores": {"toxic": 0.97, ...}, "labels": ["toxic", "insult"],
    #   "spans": {"toxic": {"begin": 0, "end": 16, "score": 0.97}, ...}}, {...}]
    clf.predict(texts, policy="precision")                # another decision policy of export.json
    clf.predict(texts, thresholds=0.3)                    # one threshold for every label
    clf.predict(texts, thresholds={"threat": 0.2})        # named labels, over the policy's
    clf.predict(texts, windows=True)                      # also every window's span and scores

scores: the probability per label (the max over the comment's windows, as scoring.score_texts gives it).
labels: those at or above the thresholds. The served thresholds are export.json's policies[default_policy]
(tuned on validation by export.py), unless a call names another policy or thresholds. spans: for each decided label,
the character offsets (Python string indices, i.e. code points) of the window with that label's highest
score: a comment that fits one window spans its own text, a long one the ~500-token stretch that drove
the label. Bad arguments raise PolicyError (a scoring.ModelError, so a common.UsageError) naming the argument.
"""
import numpy as np

from inputs import valid_unicode
from scoring import ModelError, encode_texts, load_model, score_windows

API_NAMES = ("policy", "thresholds", "thresholds")  # what errors call the policy, every-label and named thresholds
CLI_NAMES = ("--policy", "--threshold", "--thresholds")


class PolicyError(ModelError):
    """An unknown or unusable policy, or a bad threshold: the message names the argument, flag or field."""


# ----------------------------------------------------------------------------
# thresholds: the default, a policy, overrides

def check_threshold(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:  # nan fails too
        raise PolicyError(f"{name}: {value!r} is not a number in [0, 1]")
    return float(value)


def resolve_thresholds(meta, policy=None, every=None, named=None, names=API_NAMES):
    """Per-label thresholds (list, meta's label order): the policy's (default: export.json's default_policy),
    then every (all labels), then named ({label: x}). A policy whose target was not reached for some label (a
    null threshold) needs named to set it."""
    labels, policies = list(meta["labels"]), meta["policies"]
    pname, ename, tname = names
    if policy is not None and policy not in policies:
        raise PolicyError(f"{pname} {policy!r}: unknown policy; this export has {', '.join(policies)}")
    chosen = policy if policy is not None else meta["default_policy"]
    if chosen not in policies:
        raise PolicyError(f"export.json: default_policy {chosen!r} is not among its policies ({', '.join(policies)})")
    out = {n: policies[chosen]["thresholds"].get(n) for n in labels}
    if every is not None:
        out = dict.fromkeys(labels, check_threshold(every, ename))
    if named is not None:
        if not isinstance(named, dict):
            raise PolicyError(f"{tname}: expected label=value pairs, got {named!r}")
        for n, v in named.items():
            if n not in labels:
                raise PolicyError(f"{tname}: unknown label {n!r}; the labels are {', '.join(labels)}")
            out[n] = check_threshold(v, f"{tname} {n}")
    unset = [n for n in labels if out[n] is None]
    if unset:
        target = policies[chosen].get("target")
        raise PolicyError(f"{pname} {chosen!r}: no threshold reaches its target {target} on validation for "
                          f"{', '.join(unset)}; set {'it' if len(unset) == 1 else 'them'} with {tname} "
                          f"{','.join(f'{n}=X' for n in unset)}")
    return [float(out[n]) for n in labels]


def parse_named(text, flag="--thresholds"):
    """'toxic=0.4,threat=0.2' -> {"toxic": 0.4, "threat": 0.2}; a malformed pair names the flag."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, eq, value = item.partition("=")
        try:
            number = float(value) if eq else None
        except ValueError:
            number = None
        if number is None:
            raise PolicyError(f"{flag}: {item!r} is not label=number (e.g. toxic=0.4,threat=0.2)")
        out[name.strip()] = number  # range and label are checked by resolve_thresholds, naming the flag
    return out


# ----------------------------------------------------------------------------
# the classifier

class Classifier:
    """An export folder loaded once: predict() scores any number of comments, in order."""

    def __init__(self, model_dir, runtime="auto", small_job=False):
        self.model = load_model(model_dir, runtime, small_job=small_job)
        self.meta, self.labels = self.model.meta, self.model.labels
        self.runtime, self.why, self.path = self.model.runtime, self.model.why, self.model.path
        self.default_thresholds = resolve_thresholds(self.meta)  # a broken default fails at load, not per call

    def thresholds(self, policy=None, thresholds=None, names=API_NAMES):
        """The per-label thresholds predict() uses for these arguments (see resolve_thresholds)."""
        if policy is None and thresholds is None:
            return self.default_thresholds
        every = thresholds if thresholds is not None and not isinstance(thresholds, dict) else None
        named = thresholds if isinstance(thresholds, dict) else None
        return resolve_thresholds(self.meta, policy, every, named, names)

    def predict(self, texts, policy=None, thresholds=None, windows=False, batch_size=32, progress=False):
        """One dict per text: scores, labels, spans (and windows=True: every window's begin, end and
        scores). thresholds: a number (every label) or {label: number}, over the policy's."""
        th = self.thresholds(policy, thresholds)
        return self.decide(self.score_windows(texts, batch_size, progress), th, windows)

    def score_windows(self, texts, batch_size=32, progress=False):
        """One model pass, no decisions -> per text (probs (W,L) float32, [(begin, end)] per window).
        serve.py scores many requests' texts in one call, then decides each at its own thresholds."""
        texts = [valid_unicode(t)[0] for t in texts]  # lone surrogates (JSON's \ud800) become U+FFFD, one for one
        seqs, offsets = encode_texts(self.model.tokenizer, texts, offsets=True)
        (owner, start, end), probs = score_windows(self.model, seqs, batch_size, progress)
        bounds = np.searchsorted(owner, np.arange(len(texts) + 1))  # a text's windows are consecutive
        return [(probs[a:b], [window_span(offsets[i], start[j], end[j]) for j in range(a, b)])
                for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]

    def decide(self, scored, th, windows=False):
        """score_windows' output at thresholds th (a list in label order) -> predict's dicts."""
        return [describe(self.labels, th, probs, spans, windows) for probs, spans in scored]


def window_span(offsets, start, end):
    """Character (begin, end) of tokens start..end-1; an empty comment's one window is (0, 0)."""
    return (int(offsets[start][0]), int(offsets[end - 1][1])) if end > start else (0, 0)


def describe(labels, th, probs, spans, with_windows):
    """One comment's dict from its windows' probabilities (W,L) and character spans."""
    best = probs.argmax(0)  # per label, its highest window
    scores = {n: float(probs[best[j], j]) for j, n in enumerate(labels)}
    flagged = [n for n, t in zip(labels, th) if scores[n] >= t]
    out = {"scores": scores, "labels": flagged,
           "spans": {n: {"begin": spans[best[labels.index(n)]][0], "end": spans[best[labels.index(n)]][1],
                         "score": scores[n]} for n in flagged}}
    if with_windows:
        out["windows"] = [{"begin": b, "end": e, "scores": {n: float(p) for n, p in zip(labels, row)}}
                          for (b, e), row in zip(spans, probs)]
    return out
