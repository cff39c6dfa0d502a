"""data.py: Kaggle CSV parsing and validation, the split, tokenizing with its cache, batching."""
import os

import numpy as np
import pytest

from common import LABELS
from conftest import SAMPLE, run_train
from data import (bucket_width, epoch_order, pad_batch, read_csv, read_test, sorted_batches, split_indices, tokenize,
                  write_submission)
from inputs import InputError


HEADER = "id,comment_text," + ",".join(LABELS)


def _csv(tmp_path, text, name="train.csv", raw=None):
    p = tmp_path / name
    p.write_bytes(raw if raw is not None else text.encode("utf-8"))
    return str(p)


def test_quotes_commas_newlines_bom_crlf(tmp_path):
    text = (HEADER + "\r\n"
            'a1,"Hello, world, with ""quotes""",0,0,0,0,0,0\r\n'
            'a2,"line one\r\nline two\nline three",1,0,1,0,1,0\r\n'
            "a3,plain,1,1,1,1,1,1\r\n")
    ds = read_csv(_csv(tmp_path, "", raw=b"\xef\xbb\xbf" + text.encode()))
    assert ds.ids == ["a1", "a2", "a3"]
    assert ds.texts[0] == 'Hello, world, with "quotes"'
    assert ds.texts[1] == "line one\r\nline two\nline three"
    assert ds.labels.tolist() == [[0] * 6, [1, 0, 1, 0, 1, 0], [1] * 6]


@pytest.mark.parametrize("body, needle", [
    ("a1,hi,2,0,0,0,0,0", "row 2 (line 2), column toxic: label must be 0 or 1, got '2'"),
    ("a1,hi,0,-1,0,0,0,0", "column severe_toxic: label must be 0 or 1, got '-1'"),
    ("a1,hi,0,0,yes,0,0,0", "column obscene: label must be 0 or 1, got 'yes'"),
    ("a1,hi,0,0,0,,0,0", "column threat: label must be 0 or 1, got ''"),
    ("a1,,0,0,0,0,0,0", "row 2 (line 2), column comment_text: empty comment"),
    ("a1,   ,0,0,0,0,0,0", "column comment_text: empty comment"),
    ("a1,hi,0,0,0,0,0,0\n ,there,0,0,0,0,0,0", "row 3 (line 3), column id: empty id"),
    ("a1,hi,0,0,0", "row 2 (line 2): expected 8 fields, got 5"),
    ("a1,hi,0,0,0,0,0,0\na1,again,0,0,0,0,0,0", "row 3 (line 3), column id: duplicate id 'a1' (first at row 2 (line 2))"),
    ('a0,"multi\nline",0,0,0,0,0,0\na1,hi,0,0,0,0,0,7', "row 3 (line 4), column identity_hate"),
])
def test_bad_rows_name_file_row_and_column(tmp_path, body, needle):
    path = _csv(tmp_path, HEADER + "\n" + body + "\n")
    with pytest.raises(InputError) as e:
        read_csv(path)
    assert str(e.value).startswith(path) and needle in str(e.value)


@pytest.mark.parametrize("text, needle", [
    ("", "file is empty"),
    ("\n  \n", "file is empty"),
    (HEADER + "\n", "header only, no data rows"),
    ("id,text,toxic,severe_toxic,obscene,threat,insult,identity_hate\n1,a,0,0,0,0,0,0\n",
     "row 1 (header): missing column(s) comment_text"),
    ("id,comment_text,toxic\n1,a,0\n", "missing column(s) severe_toxic, obscene, threat, insult, identity_hate"),
    (HEADER + ",toxic\n1,a,0,0,0,0,0,0,1\n", "row 1 (header): column(s) toxic appear more than once"),
])
def test_bad_files(tmp_path, text, needle):
    with pytest.raises(InputError, match=None) as e:
        read_csv(_csv(tmp_path, text))
    assert needle in str(e.value)


def test_missing_file_and_invalid_utf8(tmp_path, capsys):
    with pytest.raises(InputError, match="cannot read"):
        read_csv(str(tmp_path / "nope.csv"))
    raw = (HEADER + "\na1,caf\xe9 ok,0,0,0,0,0,0\n").encode("latin-1")
    ds = read_csv(_csv(tmp_path, "", raw=raw))
    assert ds.texts == ["caf\ufffd ok"]
    assert "1 invalid UTF-8 byte sequence(s) replaced" in capsys.readouterr().err  # warnings go to stderr


def test_long_comment_is_kept_whole(tmp_path):
    long = "word " * 20_000 + "end"
    ds = read_csv(_csv(tmp_path, HEADER + f'\na1,"{long}",1,0,0,0,0,0\n'))
    assert ds.texts[0] == long and len(long) > 100_000


def test_read_test_drops_minus_one(tmp_path):
    test = _csv(tmp_path, "id,comment_text\nt1,hello\nt2,you idiot\nt3,skip me\n", "test.csv")
    labels = _csv(tmp_path, "id," + ",".join(LABELS) + "\nt1,0,0,0,0,0,0\nt2,1,0,0,0,1,0\nt3,-1,-1,-1,-1,-1,-1\n",
                  "test_labels.csv")
    ds = read_test(test, labels)
    assert ds.ids == ["t1", "t2"] and ds.labels.tolist() == [[0] * 6, [1, 0, 0, 0, 1, 0]]


def test_a_label_set_of_its_own_and_test_csv_without_labels(tmp_path):
    """read_csv reads the label columns named (a run's own set, in its order; other columns ignored), and
    names=() reads a test.csv: ids and texts, no labels."""
    path = _csv(tmp_path, "id,comment_text,toxic,spam,extra\na1,hi,1,0,x\na2,buy now,0,1,y\n")
    ds = read_csv(path, names=("spam", "toxic"))
    assert ds.ids == ["a1", "a2"] and ds.labels.dtype == np.uint8 and ds.labels.tolist() == [[0, 1], [1, 0]]
    with pytest.raises(InputError, match=r"missing column\(s\) severe_toxic, obscene"):
        read_csv(path)  # the default set: Kaggle's six
    with pytest.raises(InputError, match=r"row 2 \(line 2\), column extra: label must be 0 or 1, got 'x'"):
        read_csv(path, names=("spam", "extra"))
    test = read_csv(_csv(tmp_path, "id,comment_text\nt1,hello\n", "test.csv"), names=())
    assert test.ids == ["t1"] and test.texts == ["hello"] and test.labels is None


def test_read_test_with_a_label_set_of_its_own(tmp_path, capsys):
    test = _csv(tmp_path, "id,comment_text\nt1,hello\nt2,buy now\nt3,skip me\n", "test.csv")
    labels = _csv(tmp_path, "id,spam,toxic\nt1,0,0\nt2,1,0\nt3,-1,0\n", "test_labels.csv")
    ds = read_test(test, labels, names=("spam", "toxic"))
    assert ds.ids == ["t1", "t2"] and ds.labels.tolist() == [[0, 0], [1, 0]]
    assert "3 rows, 1 labelled -1 dropped, 2 scored" in capsys.readouterr().out
    bad = _csv(tmp_path, "id,spam,toxic\nt1,0,0\nt2,2,0\nt3,0,0\n", "bad_labels.csv")
    with pytest.raises(InputError, match=r"bad_labels.csv: row 3 \(line 3\), column spam: label must be -1, 0 or 1"):
        read_test(test, bad, names=("spam", "toxic"))
    short = _csv(tmp_path, "id,spam,toxic\nt1,0,0\n", "short_labels.csv")
    with pytest.raises(InputError, match="short_labels.csv: no labels for id 't2' of"):
        read_test(test, short, names=("spam", "toxic"))


def test_input_errors_are_usage_errors():
    from common import UsageError
    assert issubclass(InputError, UsageError)  # exit 2, one line, in every main


def _labels(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    rates = np.array([0.25, 0.02, 0.13, 0.007, 0.12, 0.02])
    return (rng.random((n, 6)) < rates).astype(np.uint8)


def test_split_is_deterministic_stratified_and_seed_free():
    y = _labels()
    tr, va = split_indices(y, 0.1, split_seed=7)
    tr2, va2 = split_indices(y, 0.1, split_seed=7)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(y)
    assert abs(len(va) - 200) <= 10
    assert (y[va].sum(0) > 0).all() and (y[tr].sum(0) > 0).all()  # even the rarest label on both sides
    assert not np.array_equal(va, split_indices(y, 0.1, split_seed=8)[1])


def test_split_refuses_a_label_without_enough_positives():
    y = _labels()
    y[:, 3] = 0
    y[5, 3] = 1
    with pytest.raises(InputError, match="label threat has 1 positive"):
        split_indices(y, 0.1, 0)


def test_split_refusal_names_the_label_of_the_runs_own_set():
    y = _labels()[:, :2]
    y[:, 1] = 0
    y[7, 1] = 1
    with pytest.raises(InputError, match="label spam has 1 positive"):
        split_indices(y, 0.1, 0, names=("toxic", "spam"))
    tr, va = split_indices(_labels()[:, :2], 0.1, 0, names=("toxic", "spam"))
    assert len(tr) + len(va) == 2000


def test_split_refusal_through_the_cli(tmp_path):
    """train.py: one line naming the file and the label, exit 2, before any model is built."""
    import csv

    rows = list(csv.reader(open(SAMPLE, newline="", encoding="utf-8")))
    col = rows[0].index("threat")
    positives = [r for r in rows[1:] if r[col] == "1"]
    for r in positives[1:]:  # one threat left: it cannot be on both sides of the split
        r[col] = "0"
    path = tmp_path / "one_threat.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    r = run_train(["--data_path", str(path), "--aim", "false", "--out_dir", str(tmp_path / "run")])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == (f"error: {path}: label threat has 1 positive(s): too few to have positives in both the "
                        f"training and the validation split\n")
    assert not (tmp_path / "run").exists()


def test_epoch_order_groups_lengths_and_keeps_steps_whole():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 300, size=1000)
    order = epoch_order(lengths, batch_size=8, batches_per_step=2, seed=1, epoch=0)
    assert len(order) == 1000 // 16 * 16 and len(set(order)) == len(order)
    batches = lengths[order].reshape(-1, 8)
    grouped_pad = (batches.max(1, keepdims=True) - batches).sum()
    random_pad = (lengths[rng.permutation(1000)[:len(order)]].reshape(-1, 8).max(1, keepdims=True) - batches).sum()
    assert grouped_pad < 0.3 * random_pad
    assert np.array_equal(order, epoch_order(lengths, 8, 2, seed=1, epoch=0))
    assert not np.array_equal(order, epoch_order(lengths, 8, 2, seed=1, epoch=1))
    # accumulation 2 x 8 and one batch of 16 hold the same samples in every step
    one = epoch_order(lengths, 16, 1, seed=1, epoch=0).reshape(-1, 16)
    assert all(set(a) == set(b) for a, b in zip(order.reshape(-1, 16), one))


def test_pad_batch_and_sorted_batches():
    ids, mask = pad_batch([np.array([5, 6, 7]), np.array([8])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert pad_batch([np.array([1])], pad_to=4)[0].shape == (1, 4)
    batches = sorted_batches(np.array([5, 1, 4, 2, 3]), 2)
    assert [b.tolist() for b in batches] == [[1, 3], [4, 2], [0]]


def test_token_cache_invalidated_by_data_tokenizer_and_max_length(tiny_encoder, tmp_path):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tiny_encoder + "/tokenizer.json")
    cache = str(tmp_path / "cache" / "tokens")
    a = tokenize(tok, ["hello there", "you idiot"], 16, cache)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert [len(s) for s in tokenize(tok, ["hello there", "you idiot"], 16, cache)] == [len(s) for s in a]
    assert len(list((tmp_path / "cache").iterdir())) == 1  # second call: a cache hit
    tokenize(tok, ["hello there", "you fool"], 16, cache)  # data changed
    short = tokenize(tok, ["hello there", "you idiot"], 3, cache)  # max_length changed
    assert [len(s) for s in short] == [3, 3]
    tok.add_tokens(["newword"])  # tokenizer changed
    tokenize(tok, ["hello there", "you idiot"], 16, cache)
    assert len(list((tmp_path / "cache").iterdir())) == 4


def test_head_tail_keeps_both_ends_of_a_long_comment(tiny_encoder, tmp_path):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tiny_encoder + "/tokenizer.json")
    texts = ["hello " + "there " * 40 + "you idiot", "you fool"]
    whole = tokenize(tok, texts, 512)[0].tolist()  # [CLS] ... [SEP], untruncated
    head = tokenize(tok, texts, 10)
    assert head[0].tolist() == whole[:9] + whole[-1:]  # the tokenizer's own: 8 first tokens and [SEP]
    for n, first, last in ((10, 4, 4), (11, 5, 4)):  # [CLS] + the first half + the last half + [SEP]
        both = tokenize(tok, texts, n, truncation="head_tail")
        assert both[0].tolist() == whole[:1 + first] + whole[-1 - last:]
        assert both[1].tolist() == head[1].tolist()  # a comment that fits is the same either way
    cache = str(tmp_path / "cache" / "tokens")
    a, b = tokenize(tok, texts, 10, cache), tokenize(tok, texts, 10, cache, "head_tail")
    assert len(list((tmp_path / "cache").iterdir())) == 2 and a[0].tolist() != b[0].tolist()


def test_csv_lines_may_end_in_a_lone_carriage_return(tmp_path):
    """Old Mac line ends split records as a whole-file reader does, read a line at a time."""
    path = tmp_path / "cr.csv"
    path.write_bytes((HEADER + "\ra1,first,0,0,0,0,0,0\ra2,\"two\rlines\",1,0,0,0,0,0\r").encode())
    ds = read_csv(str(path))
    assert ds.ids == ["a1", "a2"] and ds.texts == ["first", "two\rlines"] and ds.labels[1, 0] == 1


def test_bucket_width_rounds_up_to_a_few_widths():
    seqs = [np.ones(n) for n in (3, 17, 40)]
    assert bucket_width(seqs, 0, 128) is None  # off: padded to the longest
    assert bucket_width(seqs, 32, 128) == 64 and bucket_width(seqs, 32, 50) == 50  # never past max_length
    assert {bucket_width([np.ones(n)], 32, 256) for n in range(1, 257)} == set(range(32, 257, 32))


def test_write_submission_joins_its_parts_in_kaggles_format(tmp_path):
    import csv
    path = tmp_path / "submission.csv"
    parts = [(["a", "b"], np.array([[0.5, 1e-10], [0.123456789012, 1.0]], dtype=np.float64)),
             (["c"], np.array([[0.25, 0.75]], dtype=np.float32))]
    write_submission(str(path), ["toxic", "spam"], iter(parts))  # parts as they come: a generator is enough
    rows = list(csv.reader(open(path, newline="", encoding="utf-8")))
    assert rows == [["id", "toxic", "spam"], ["a", "0.5", "1e-10"], ["b", "0.123456789", "1"], ["c", "0.25", "0.75"]]


def test_write_submission_leaves_no_half_file_when_a_part_fails(tmp_path):
    path = tmp_path / "submission.csv"
    path.write_text("old")

    def parts():
        yield ["a"], np.array([[0.5]])
        raise InputError("test.csv: row 9 (line 9): expected 2 fields, got 1")
    with pytest.raises(InputError):
        write_submission(str(path), ["toxic"], parts())
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["submission.csv"]
