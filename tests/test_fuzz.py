"""Property-based tests (hypothesis): the CSV reader round-trips whatever csv.writer writes and names
the row and column of a bad label; batching scores every row (and every window) exactly once and
gives the results back in input order; windows cover every token and never exceed max_length."""
import csv
import io
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import scoring
from common import LABELS
from data import read_csv, sorted_batches
from inputs import InputError

FAST = settings(max_examples=60, deadline=None)

# Comment text: anything, with the characters a CSV reader can trip on made common.
TRICKY = st.sampled_from(['"', ",", "\n", "\r", "\r\n", " ", "\t", "\ufeff", "\u2028", "\x85", "\x00", "é", "🙂", "世"])
TEXT = st.lists(st.one_of(st.text(max_size=8), TRICKY), max_size=12).map("".join)


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "train.csv"


def _write(path, rows, lineterminator, bom, quoting):
    # csv.writer quotes a field holding the characters of its lineterminator only, so with "\n" a bare
    # "\r" would go out unquoted: invalid CSV that any reader splits. Such files are not generated.
    assume(lineterminator == "\r\n" or not any("\r" in str(f) for row in rows for f in row))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=lineterminator, quoting=quoting)
    w.writerow(["id", "comment_text", *LABELS])
    w.writerows(rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode("utf-8"))
    return str(path)


ROWS = st.lists(st.tuples(TEXT, TEXT.filter(lambda t: t.strip()), st.lists(st.integers(0, 1), min_size=6,
                                                                           max_size=6)),
                min_size=1, max_size=8, unique_by=lambda r: r[0].strip()).filter(
    lambda rows: all(r[0].strip() for r in rows))
CSV_STYLE = dict(lineterminator=st.sampled_from(["\r\n", "\n"]), bom=st.booleans(),
                 quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))


@FAST
@given(rows=ROWS, **CSV_STYLE)
def test_csv_round_trip(csv_path, rows, lineterminator, bom, quoting):
    path = _write(csv_path, [[i, t, *y] for i, t, y in rows], lineterminator, bom, quoting)
    ds = read_csv(path)
    assert ds.ids == [i.strip() for i, _, _ in rows]
    assert ds.texts == [t for _, t, _ in rows]  # byte for byte: quotes, commas, newlines, unicode
    assert ds.labels.tolist() == [y for _, _, y in rows]


@FAST
@given(rows=ROWS, data=st.data(), **CSV_STYLE)
def test_a_bad_label_is_named_by_row_and_column(csv_path, rows, data, lineterminator, bom, quoting):
    k = data.draw(st.integers(0, len(rows) - 1))
    col = data.draw(st.integers(0, len(LABELS) - 1))
    bad = data.draw(TEXT.filter(lambda v: v.strip() not in ("0", "1")))
    table = [[i, t, *y] for i, t, y in rows]
    table[k][2 + col] = bad
    path = _write(csv_path, table, lineterminator, bom, quoting)
    with pytest.raises(InputError) as e:
        read_csv(path)
    assert str(e.value).startswith(f"{path}: row {k + 2} (line ")  # the header is row 1
    assert f"column {LABELS[col]}: label must be 0 or 1, got {bad.strip()!r}" in str(e.value)


# ----------------------------------------------------------------------------
# batching: every row exactly once, order restored

@FAST
@given(lengths=st.lists(st.integers(0, 600), max_size=200), batch_size=st.integers(1, 70))
def test_sorted_batches_cover_every_row_once_in_length_order(lengths, batch_size):
    batches = sorted_batches(np.array(lengths, dtype=np.int64), batch_size)
    flat = np.concatenate(batches) if batches else np.array([], dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches) and all(len(b) == batch_size for b in batches[:-1])
    assert np.all(np.diff(np.array(lengths)[flat]) >= 0) if len(flat) else True


@FAST
@given(lengths=st.lists(st.integers(1, 600), max_size=200), batch_size=st.integers(1, 70),
       max_tokens=st.integers(1, 5000))
def test_token_budget_batches_stay_under_the_budget_and_fill_it(lengths, batch_size, max_tokens):
    """scoring.py's batches (predict.py's): every row once, in length order; rows x longest <= max_tokens (a row alone may
    pass it), and no batch could have taken the next row."""
    lengths = np.array(lengths, dtype=np.int64)
    batches = sorted_batches(lengths, batch_size, max_tokens)
    flat = np.concatenate(batches) if batches else np.array([], dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths))) and np.all(np.diff(lengths[flat]) >= 0)
    for b, after in zip(batches, batches[1:] + [None]):
        assert 1 <= len(b) <= batch_size and (len(b) == 1 or len(b) * lengths[b].max() <= max_tokens)
        if after is not None and len(b) < batch_size:  # it stopped for the budget, not too soon
            assert (len(b) + 1) * lengths[after[0]] > max_tokens


class Recorder:
    """A stand-in model for validation.predict_logits: logits are a fingerprint of each unpadded row."""

    def __init__(self):
        self.rows, self.shapes = [], []

    def eval(self):
        pass

    def train(self):
        pass

    def __call__(self, ids, mask):
        self.rows += [tuple(r[m.bool()].tolist()) for r, m in zip(ids, mask)]
        self.shapes.append(tuple(ids.shape))
        n = mask.sum(1, keepdim=True).double()
        s = (ids * mask).sum(1, keepdim=True).double()
        return torch.cat([n, s, s % 7, n * 3 + 1, -s, s / (n + 1)], 1)  # (B,6)


def _fingerprint(seq):
    n, s = len(seq), int(np.sum(seq))
    return [n, s, s % 7, n * 3 + 1, -s, s / (n + 1)]


SEQS = st.lists(st.lists(st.integers(1, 30000), min_size=1, max_size=40), min_size=1, max_size=60)


@FAST
@given(seqs=SEQS, data=st.data(), batch_size=st.integers(1, 17), max_tokens=st.none() | st.integers(1, 300))
def test_validation_scores_every_row_once_in_order(seqs, data, batch_size, max_tokens):
    from validation import predict_logits
    rows = np.array(data.draw(st.lists(st.integers(0, len(seqs) - 1), max_size=80, unique=True)), dtype=np.int64)
    seqs = [np.array(s, dtype=np.int32) for s in seqs]
    model = Recorder()
    out = predict_logits(model, seqs, rows, 6, batch_size, torch.device("cpu"), nullcontext(), max_tokens)
    for n, width in model.shapes:  # within the batch size, and within max_tokens unless a single row is wider
        assert n <= batch_size and (max_tokens is None or n * width <= max_tokens or n == 1)
    assert sorted(model.rows) == sorted(tuple(seqs[i].tolist()) for i in rows)  # each row scored once
    expected = np.array([_fingerprint(seqs[i]) for i in rows], dtype=np.float32).reshape(len(rows), 6)
    assert np.array_equal(out, expected)  # and put back in the order asked


# ----------------------------------------------------------------------------
# scoring.py: windows over long comments, batched across comments

class CharTokenizer:
    """One id per character: split_text's pieces then give exactly the ids of the whole text."""

    def encode_batch(self, texts, add_special_tokens=False):
        return [SimpleNamespace(ids=[1000 + ord(c) % 20000 for c in t]) for t in texts]


class Session:
    """A stand-in onnxruntime session: records each window, scores it by a fingerprint in [0, 1)."""

    def __init__(self):
        self.windows = []

    def run(self, names, feeds):
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape
        rows = [tuple(r[m.astype(bool)].tolist()) for r, m in zip(ids, mask)]
        self.windows += rows
        return [np.array([_window_score(r) for r in rows], dtype=np.float32).reshape(len(rows), 6)]


def _window_score(row):
    s = sum(row)
    return [((s * (j + 3) + len(row) * j) % 1009) / 1009 for j in range(6)]


@FAST
@given(texts=st.lists(TEXT.map(lambda t: t * 3), min_size=1, max_size=12), max_length=st.integers(3, 24),
       batch_size=st.integers(1, 9))
def test_predict_scores_every_window_once_and_keeps_the_order(texts, max_length, batch_size):
    meta = {"max_length": max_length, "prefix_ids": [101], "suffix_ids": [102], "pad_id": 0}
    session, tok = Session(), CharTokenizer()
    model = SimpleNamespace(meta=meta, labels=list(LABELS), tokenizer=tok, session=session)
    got = scoring.score_texts(model, texts, batch_size=batch_size, progress=False)
    body = max_length - 2
    expected_windows, expected = [], []
    for t in texts:
        ids = tok.encode_batch([t])[0].ids
        wins = [tuple([101] + ids[s:s + body] + [102]) for s in scoring.window_starts(len(ids), body)]
        expected_windows += wins
        expected.append(np.max([_window_score(w) for w in wins], axis=0))
    assert sorted(session.windows) == sorted(expected_windows)  # every window exactly once
    assert all(len(w) <= max_length for w in session.windows)
    assert np.array_equal(got, np.array(expected, dtype=np.float32))  # max over its windows, input order


@FAST
@given(n=st.integers(0, 5000), body=st.integers(1, 600))
def test_windows_cover_every_token_and_fit(n, body):
    starts = scoring.window_starts(n, body)
    assert starts[0] == 0 and starts == sorted(set(starts))
    ends = [min(s + body, n) for s in starts]
    assert ends[-1] == n  # the last window reaches the end
    assert all(b <= e for b, e in zip(starts[1:], ends))  # no gap between consecutive windows
    if n > body:
        assert all(0 <= s and s + body <= n for s in starts)  # every window of a long comment is full
    else:
        assert starts == [0]


@FAST
@given(lengths=st.lists(st.integers(0, 400), min_size=1, max_size=20), max_length=st.integers(3, 130))
def test_window_batches_fit_max_length_and_cover_every_token(lengths, max_length):
    seqs = [np.arange(1, n + 1, dtype=np.int32) for n in lengths]  # token k of a comment has id k + 1
    body = max_length - 2
    owner, start, end = windows = scoring.make_windows(seqs, body)
    ids, mask = scoring.window_batch(seqs, windows, np.arange(len(owner)), [101], [102], 0)
    assert ids.shape[1] <= max_length and (mask.sum(1) >= 2).all()
    for i, n in enumerate(lengths):
        covered = np.zeros(n, dtype=bool)
        for k in np.flatnonzero(owner == i):
            row = ids[k][mask[k].astype(bool)]
            assert row[0] == 101 and row[-1] == 102 and len(row) <= max_length
            covered[row[1:-1] - 1] = True
        assert covered.all()


@FAST
@given(text=TEXT.map(lambda t: t * 20), size=st.integers(2, 64))
def test_split_text_pieces_join_back_and_are_bounded(text, size):
    pieces = scoring.split_text(text, size)
    assert "".join(pieces) == text and all(len(p) <= size for p in pieces)


# ----------------------------------------------------------------------------
# metrics and decisions: one F1 for both weight shapes, thresholds mapped to the plain sigmoid's scale

@FAST
@given(data=st.data(), n=st.integers(1, 40), n_labels=st.integers(1, 4), resamples=st.integers(1, 5))
def test_weighted_f1_agrees_across_its_two_weight_shapes(data, n, n_labels, resamples):
    """Row weights (R, N) and the same weights spread over the labels (N, L) give the same F1, resample by
    resample: compare.py's bootstrap and decisions.py's base-rate weights are one computation."""
    from metrics import weighted_f1
    probs = np.array(data.draw(st.lists(st.sampled_from([0.0, 0.2, 0.5, 0.7, 1.0]), min_size=n * n_labels,
                                        max_size=n * n_labels))).reshape(n, n_labels)
    labels = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n * n_labels, max_size=n * n_labels)),
                      dtype=np.uint8).reshape(n, n_labels)
    counts = np.array(data.draw(st.lists(st.integers(0, 3), min_size=resamples * n, max_size=resamples * n)),
                      dtype=np.float64).reshape(resamples, n)
    thresholds = data.draw(st.lists(st.sampled_from([0.2, 0.5, 0.7]), min_size=n_labels, max_size=n_labels))
    f1s, micros = weighted_f1(probs, labels, thresholds, counts, resamples=True)
    assert f1s.shape == (resamples, n_labels) and micros.shape == (resamples,)
    assert ((0 <= f1s) & (f1s <= 1)).all() and ((0 <= micros) & (micros <= 1)).all()
    for r in range(resamples):
        f1, micro = weighted_f1(probs, labels, thresholds, np.repeat(counts[r][:, None], n_labels, 1))
        np.testing.assert_allclose(f1s[r], f1, rtol=1e-12, atol=1e-15)
        assert micros[r] == pytest.approx(micro, rel=1e-12, abs=1e-15)


@FAST
@given(a=st.floats(1 / 16, 16), b=st.floats(-8, 8), t=st.floats(0.001, 0.999),
       z=st.lists(st.floats(-20, 20), min_size=1, max_size=50))
def test_raw_thresholds_flag_what_the_calibrated_threshold_flags(a, b, t, z):
    """sigmoid(a z + b) >= t exactly where sigmoid(z) >= raw_thresholds(...), for any slope in decisions' bounds,
    any intercept and threshold (rows within rounding of the threshold itself left out)."""
    import decisions
    from common import sigmoid
    cal = {"method": "platt", "a": {"x": a}, "b": {"x": b}}
    z = np.array(z)[:, None]
    (raw,) = decisions.raw_thresholds(cal, [t], ["x"])
    calibrated = decisions.apply_calibration(z, cal, ["x"])[:, 0]
    clear = np.abs(calibrated - t) > 1e-9 * max(1.0, a)
    np.testing.assert_array_equal((sigmoid(z[:, 0]) >= raw)[clear], (calibrated >= t)[clear])
