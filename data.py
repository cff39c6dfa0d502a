"""Kaggle Jigsaw CSVs in, padded numpy batches out, submissions written. No torch here: scoring.py shares it.

    from data import micro_batches, prepare, read_csv, split_indices
    ds = read_csv("data/sample/train.csv")                  # ids, texts, labels (N,L): LABELS' columns
    train_idx, val_idx = split_indices(ds.labels, 0.1, split_seed=1234)
    data = prepare(cfg, tokenizer, samples_per_step=32)     # what train.py trains on: split, tokenized
    ids, mask, y = next(micro_batches(data, cfg, rank=0, world=1, samples_seen=0))  # (B,T), (B,T), (B,L)

Kaggle's test set: read_test("test.csv", "test_labels.csv") drops the rows labelled -1.
"""
import csv
import hashlib
import os
from dataclasses import dataclass

import numpy as np

from common import FAIRNESS, LABELS, atomic_write
from inputs import InputError, read_rows



@dataclass
class Dataset:
    ids: list  # str per row
    texts: list  # str per row
    labels: np.ndarray | None  # (N, L) uint8, or None for unlabelled files


# ----------------------------------------------------------------------------
# reading

def read_csv(path, names=LABELS):
    """Read a Kaggle train.csv: id, comment_text and a 0/1 column per label of names. names=() reads test.csv."""
    required = ("id", "comment_text") + tuple(names)
    ids, texts, ys, seen = [], [], [], {}
    for where, row in read_rows(path, required):
        rid = row["id"].strip()
        if not rid:  # ids join predictions to submissions and to val_predictions.npz
            raise InputError(f"{path}: {where}, column id: empty id")
        if rid in seen:
            raise InputError(f"{path}: {where}, column id: duplicate id {rid!r} (first at {seen[rid]})")
        seen[rid] = where
        if not row["comment_text"].strip():
            raise InputError(f"{path}: {where}, column comment_text: empty comment")
        if names:
            y = []
            for col in names:
                v = row[col].strip()
                if v not in ("0", "1"):
                    raise InputError(f"{path}: {where}, column {col}: label must be 0 or 1, got {v!r}")
                y.append(int(v))
            ys.append(y)
        ids.append(rid)
        texts.append(row["comment_text"])
    if not ids:
        raise InputError(f"{path}: header only, no data rows")
    return Dataset(ids, texts, np.array(ys, dtype=np.uint8) if names else None)


def read_test(test_path, labels_path, names=LABELS):
    """Kaggle's test.csv joined with test_labels.csv; rows labelled -1 (not scored by Kaggle) dropped."""
    test = read_csv(test_path, names=())
    by_id = {}
    for where, row in read_rows(labels_path, ("id",) + tuple(names)):
        vals = [row[c].strip() for c in names]
        for col, v in zip(names, vals):
            if v not in ("-1", "0", "1"):
                raise InputError(f"{labels_path}: {where}, column {col}: label must be -1, 0 or 1, got {v!r}")
        by_id[row["id"].strip()] = [int(v) for v in vals]
    keep, ys = [], []
    for i, rid in enumerate(test.ids):
        if rid not in by_id:
            raise InputError(f"{labels_path}: no labels for id {rid!r} of {test_path}")
        if -1 not in by_id[rid]:
            keep.append(i)
            ys.append(by_id[rid])
    print(f"{test_path}: {len(test.ids)} rows, {len(test.ids) - len(keep)} labelled -1 dropped, {len(keep)} scored")
    if not keep:
        raise InputError(f"{labels_path}: every row is labelled -1; nothing to score")
    return Dataset([test.ids[i] for i in keep], [test.texts[i] for i in keep], np.array(ys, dtype=np.uint8))


# ----------------------------------------------------------------------------
# split

def split_indices(labels, val_fraction, split_seed, names=LABELS):
    """Deterministic stratified split -> (train_idx, val_idx), both sorted.

    Each row is stratified by its rarest positive label (or 'clean'), so even the rarest label
    lands on both sides in proportion. Depends only on split_seed, never on the training seed.
    """
    n = len(labels)
    freq = labels.sum(0)
    # rarest positive label of each row; clean rows get stratum -1
    rarity = np.where(labels.astype(bool), freq[None, :], np.iinfo(np.int64).max)
    stratum = np.where(labels.any(1), rarity.argmin(1), -1)
    rng = np.random.default_rng(split_seed)
    val = []
    for s in np.unique(stratum):
        members = rng.permutation(np.flatnonzero(stratum == s))
        k = int(round(val_fraction * len(members)))
        if len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)  # keep at least one on each side
        val.extend(members[:k])
    val_idx = np.sort(np.array(val, dtype=np.int64))
    train_idx = np.setdiff1d(np.arange(n), val_idx)
    for j, name in enumerate(names):
        if labels[train_idx, j].sum() == 0 or labels[val_idx, j].sum() == 0:
            raise InputError(f"label {name} has {int(freq[j])} positive(s): too few to have positives "
                            f"in both the training and the validation split")
    return train_idx, val_idx


# ----------------------------------------------------------------------------
# tokenizing, with an on-disk cache

def tokenize(tokenizer, texts, max_length, cache_path=None, truncation="head"):
    """List of int32 id arrays, at most max_length long, not padded.

    tokenizer is a `tokenizers.Tokenizer`. A longer comment keeps its first max_length tokens
    ("head"), or its first and last halves ("head_tail": a long comment's end counts too;
    docs/experiments.md has the figures). With cache_path, ids are stored there keyed by the
    texts, the tokenizer, max_length and truncation, so a change in any of them re-tokenizes.
    """
    tokenizer.no_padding()
    if truncation == "head":
        tokenizer.enable_truncation(max_length)
    else:
        tokenizer.no_truncation()
    key = hashlib.sha256()
    key.update(tokenizer.to_str().encode())  # vocab, normaliser, truncation: any change is a new key
    key.update(f"{max_length} {truncation}".encode())
    for t in texts:
        key.update(t.encode("utf-8", "surrogatepass") + b"\0")
    key = key.hexdigest()[:16]
    if cache_path:
        path = f"{cache_path}-{key}.npz"
        if os.path.exists(path):
            z = np.load(path)
            return np.split(z["flat"], z["offsets"][1:-1])
    encodings = tokenizer.encode_batch(texts)
    seqs = [np.array(e.ids if len(e.ids) <= max_length else head_tail(e.ids, e.special_tokens_mask, max_length),
                     dtype=np.int32) for e in encodings]
    if cache_path:  # every rank of a DDP job may write it at once: each to a temporary of its own
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
        atomic_write(path, lambda f: np.savez(f, flat=np.concatenate(seqs), offsets=offsets), unique=True)
    return seqs


def head_tail(ids, special_mask, max_length):
    """The special tokens at both ends, then the first and the last halves of the text between them."""
    lead = next((i for i, m in enumerate(special_mask) if not m), len(ids))  # [CLS]
    trail = next((i for i, m in enumerate(reversed(special_mask)) if not m), 0)  # [SEP]
    room = max(0, max_length - lead - trail)
    body = ids[lead:len(ids) - trail]
    return ids[:lead] + body[:room - room // 2] + body[len(body) - room // 2:] + ids[len(ids) - trail:]


# ----------------------------------------------------------------------------
# what training reads: the split, tokenized, and its micro-batches


@dataclass
class TrainData:
    ds: Dataset
    train_idx: np.ndarray   # rows of ds, sorted
    val_idx: np.ndarray
    seqs: list              # token ids per row of ds, at max_length
    val_seqs: list          # the same at eval_max_length (seqs itself when that is max_length)
    lengths: np.ndarray     # len(seqs[i]) per row
    pad_id: int
    steps_per_epoch: int    # optimizer steps; the tail that fills no whole step is dropped


def identity_rows(n, seed, names=LABELS, folder=FAIRNESS):
    """n training rows made from data/fairness/train_templates.txt x train_terms.txt (sampled with the seed) ->
    Dataset: harmless mentions of identities labelled clean, attacks on them labelled toxic, insult and
    identity_hate (the names among them). Never the evaluation sets' templates or terms (data/make_fairness.py)."""
    def lines(name):
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as f:
            rows = [(k, line.rstrip("\n").split("\t")) for k, line in enumerate(f, 1)
                    if line.strip() and not line.startswith("#")]
        bad = next((k for k, r in rows if len(r) != 2), None)
        if bad is not None:
            raise InputError(f"{path}: line {bad}: expected two fields separated by a tab")
        return [r for _, r in rows]
    templates, terms = lines("train_templates.txt"), [t[-1] for t in lines("train_terms.txt")]
    rng = np.random.default_rng([seed, 7])
    attack = np.array([name in ("toxic", "insult", "identity_hate") for name in names], dtype=np.uint8)
    picks = [(templates[i], terms[j])
             for i, j in zip(rng.integers(len(templates), size=n), rng.integers(len(terms), size=n))]
    texts = [t.replace("{t}", term) for (_, t), term in picks]
    labels = np.array([attack * int(toxic) for (toxic, _), _ in picks], dtype=np.uint8).reshape(n, len(names))
    return Dataset([f"identity-{k}" for k in range(n)], [t[:1].upper() + t[1:] for t in texts], labels)


def prepare(cfg, tokenizer, samples_per_step):
    """Read cfg.data_path, split it, add cfg.identity_rows made-up rows to the training side, tokenize it all
    (cached under cfg.cache_dir) -> TrainData."""
    ds = read_csv(cfg.data_path)
    try:
        train_idx, val_idx = split_indices(ds.labels, cfg.val_fraction, cfg.split_seed)
    except InputError as e:  # the split cannot know which file it splits
        raise InputError(f"{cfg.data_path}: {e}") from None
    if cfg.identity_rows:  # appended after the file's rows: the split and validation are the file's alone
        extra = identity_rows(cfg.identity_rows, cfg.split_seed)
        train_idx = np.concatenate([train_idx, len(ds.ids) + np.arange(cfg.identity_rows)])
        ds = Dataset(ds.ids + extra.ids, ds.texts + extra.texts, np.concatenate([ds.labels, extra.labels]))
    steps_per_epoch = len(train_idx) // samples_per_step
    if steps_per_epoch == 0:
        raise InputError(f"{cfg.data_path}: {len(train_idx)} training rows do not fill one global batch "
                        f"of {samples_per_step}; lower batch_size or accum_steps")
    cache = os.path.join(cfg.cache_dir, "tokens")
    seqs = tokenize(tokenizer, ds.texts, cfg.max_length, cache, cfg.truncation)
    # Validation may see more of each comment than training did: a model trained on 128 tokens ranks
    # long comments better when it reads up to 512 (docs/experiments.md has the figures).
    eval_length = cfg.eval_max_length or cfg.max_length
    val_seqs = seqs if eval_length == cfg.max_length else tokenize(tokenizer, ds.texts, eval_length, cache,
                                                                    cfg.truncation)
    return TrainData(ds, train_idx, val_idx, seqs, val_seqs, np.array([len(s) for s in seqs]),
                     tokenizer.token_to_id("[PAD]") or 0, steps_per_epoch)


def micro_batches(data, cfg, rank, world, samples_seen):
    """Endless micro-batches for this rank -> (input_ids, attention_mask (B,T) int64, labels (B,L) float32),
    starting after samples_seen, so a resumed run reads on where it stopped."""
    per_rank, per_micro = cfg.batch_size, cfg.batch_size * world  # samples per micro-step, on all ranks
    per_epoch = data.steps_per_epoch * cfg.accum_steps  # micro-batches
    epoch, j = divmod(samples_seen // per_micro, per_epoch)
    pad_to = cfg.max_length if cfg.pad_to_max_length else None
    while True:
        order = data.train_idx[epoch_order(data.lengths[data.train_idx], per_micro, cfg.accum_steps, cfg.seed, epoch,
                                           cfg.group_by_length)]
        for j in range(j, per_epoch):
            rows = order[j * per_micro:(j + 1) * per_micro][rank * per_rank:(rank + 1) * per_rank]
            seqs = [data.seqs[i] for i in rows]
            ids, mask = pad_batch(seqs, data.pad_id, pad_to or bucket_width(seqs, cfg.pad_multiple, cfg.max_length))
            yield ids, mask, data.ds.labels[rows].astype(np.float32)
        epoch, j = epoch + 1, 0


# ----------------------------------------------------------------------------
# batching

def epoch_order(lengths, batch_size, batches_per_step, seed, epoch, group_by_length=True, chunk=64):
    """Sample order for one epoch: consecutive blocks of batch_size form the micro-batches, and
    consecutive blocks of batch_size * batches_per_step the optimizer steps.

    Length grouping: shuffle, sort by length within chunks of `chunk` steps, then shuffle
    whole optimizer steps, so a batch holds similar lengths (little padding) yet epochs stay
    random. A step holds the same samples however it is split into micro-batches or ranks, so
    gradient accumulation and DDP train exactly like one big batch. The tail that does not fill
    a whole step is dropped (a different tail each epoch).
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    per_step = batch_size * batches_per_step
    order = order[: len(order) // per_step * per_step]
    if group_by_length and len(order):
        span = per_step * chunk  # in whole steps, so the split into micro-batches changes nothing
        for s in range(0, len(order), span):
            block = order[s:s + span]
            order[s:s + span] = block[np.argsort(lengths[block], kind="stable")]
        steps = order.reshape(-1, per_step)
        order = steps[rng.permutation(len(steps))].reshape(-1)
    return order


def pad_batch(seqs, pad_id=0, pad_to=None):
    """Right-pad to the longest sequence (or pad_to) -> input_ids, attention_mask: (B,T) int64."""
    width = pad_to or max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return ids, mask


def bucket_width(seqs, multiple, max_length):
    """The longest length rounded up to a multiple of `multiple` (0: not rounded, None), at most max_length: a few
    widths, so torch.compile builds one graph for each and reuses them, at some extra padding."""
    if not multiple:
        return None
    return min(max_length, -(-max(len(s) for s in seqs) // multiple) * multiple)


def sorted_batches(lengths, batch_size, max_tokens=None):
    """Index batches in ascending length order, for inference: least padding, same results.

    With max_tokens, a batch also ends before rows x its longest length would pass max_tokens (one row
    at least): activations, and so memory, stay bounded however long the comments are."""
    order = np.argsort(lengths, kind="stable")
    if max_tokens is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches, start, sorted_lengths = [], 0, np.asarray(lengths)[order]
    while start < len(order):
        # ascending lengths: a batch of k rows from start is k x sorted_lengths[start + k - 1] tokens wide
        k = np.arange(1, min(batch_size, len(order) - start) + 1)
        fits = k * sorted_lengths[start:start + len(k)] <= max_tokens
        n = max(1, int(np.argmin(fits)) if not fits.all() else len(k))
        batches.append(order[start:start + n])
        start += n
    return batches


# ----------------------------------------------------------------------------
# Kaggle's submission format

def write_submission(path, names, parts):
    """id + one probability column per label, from (ids, probs) parts as they come, published atomically: a
    failure in a later part leaves no half file."""
    def write(f):
        w = csv.writer(f)
        w.writerow(["id", *names])
        for part_ids, probs in parts:
            w.writerows([rid, *(f"{p:.9g}" for p in row)] for rid, row in zip(part_ids, probs))
    atomic_write(path, write, mode="w")
