"""compare.py on synthetic run folders (seconds), plus one tiny real run (metrics.py itself: test_metrics.py).

    python -m pytest -q tests/test_compare.py
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import compare
from common import LABELS
from conftest import ROOT
from decisions import own_rate_thresholds

L = len(LABELS)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def synthetic_scores(rng, labels, d, shared, noise=1.0):
    """Binormal scores: logit = d * y + shared + noise * e, with `shared` common to every run (what
    makes the pairing matter). Given the class the logit is normal with sd sqrt(1 + noise^2), so a
    run's population AUC is phi(d / sqrt(2 (1 + noise^2))) and nothing about the seed changes it."""
    logit = d * labels + shared + noise * rng.standard_normal(labels.shape)
    return 1 / (1 + np.exp(-logit))


def true_auc(d, noise=1.0):
    return np.mean([phi(dj / math.sqrt(2 * (1 + noise ** 2))) for dj in np.broadcast_to(d, (L,))])


def true_macro_f1(d, prevalence, threshold, noise=1.0):
    """Population F1 per label at a fixed threshold: 2 TP / (TP + FP + P) in rates."""
    s, t = math.sqrt(1 + noise ** 2), math.log(threshold / (1 - threshold))
    f1 = []
    for dj, p in zip(np.broadcast_to(d, (L,)), np.broadcast_to(prevalence, (L,))):
        tp, fp = p * (1 - phi((t - dj) / s)), (1 - p) * (1 - phi(t / s))
        f1.append(2 * tp / (tp + fp + p))
    return np.mean(f1)


def logits_of(probs):
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def write_run(folder, probs, labels, seed, pooling="cls", rows=None, aim_hash=None, aim_repo="runs", names=LABELS):
    """A run folder as train.py leaves it: run.json and val_predictions.npz (no checkpoints)."""
    os.makedirs(folder, exist_ok=True)
    n = len(labels)
    rows = np.arange(n) if rows is None else rows
    config = {"encoder": "sentence-transformers/all-MiniLM-L6-v2", "pooling": pooling, "dropout": 0.1,
              "data_path": "data/sample/train.csv", "split_seed": 1234, "seed": seed, "lr": 5e-5,
              "out_dir": str(folder), "aim": aim_hash is not None, "aim_repo": aim_repo, "eval_every": 500}
    with open(os.path.join(folder, "run.json"), "w") as f:
        json.dump({"config": config, "aim_hash": aim_hash, "aim_repo": aim_repo, "precision_effective": "fp32",
                   "world_size": 1}, f)
    logits = logits_of(probs)  # as train.py saves them: the thresholds tuned on the rows as they are
    np.savez(os.path.join(folder, "val_predictions.npz"), ids=np.array([f"id{i:05d}" for i in rows]), rows=rows,
             probs=probs.astype(np.float32), logits=logits.astype(np.float32), labels=labels.astype(np.uint8),
             thresholds=own_rate_thresholds(logits, labels, list(names)), step=10, label_names=np.array(list(names)))
    return str(folder)


def synthetic_runs(root, n=600, seeds=(0, 1), d=(("cls", 1.5), ("mean", 1.0)), seed=0):
    """Run folders for groups of (pooling, separation d) on shared labels -> list of paths."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, L)) < 0.15).astype(np.uint8)
    shared = rng.standard_normal((n, L))
    return [write_run(os.path.join(root, f"{pool}_s{s}"), synthetic_scores(rng, labels, dd, shared), labels, s, pool)
            for pool, dd in d for s in seeds]


# ----------------------------------------------------------------------------
# the paired bootstrap


def simulated_groups(rng, n, d_a, d_b, threshold=0.6, seeds=2, prevalence=0.2):
    labels = (rng.random((n, L)) < prevalence).astype(np.uint8)
    shared = rng.standard_normal((n, L))
    groups = []
    for letter, d in (("A", d_a), ("B", d_b)):
        runs = [{"probs": synthetic_scores(rng, labels, d, shared), "thresholds": np.full(L, threshold)}
                for _ in range(seeds)]
        groups.append({"letter": letter, "runs": runs})
    return labels, groups


def test_bootstrap_interval_covers_true_difference():
    """Over 20 simulated validation sets, the 95% intervals of A - B (mean AUC and macro F1 at fixed
    thresholds) cover the population difference about 19 times; 16 is a loose floor."""
    rng = np.random.default_rng(2)
    d_a, d_b = np.array([1.6, 1.2, 1.4, 1.0, 1.5, 1.3]), np.array([1.3, 1.2, 1.1, 1.0, 1.4, 1.5])
    true_auc_diff = true_auc(d_a) - true_auc(d_b)
    true_f1_diff = true_macro_f1(d_a, 0.2, 0.6) - true_macro_f1(d_b, 0.2, 0.6)
    covered = {"aucroc_macro": 0, "macro_f1_tuned": 0}
    for _ in range(20):
        labels, groups = simulated_groups(rng, 600, d_a, d_b)
        draws, _ = compare.bootstrap(groups, labels, resamples=400, seed=int(rng.integers(1 << 30)))
        for key, truth in (("aucroc_macro", true_auc_diff), ("macro_f1_tuned", true_f1_diff)):
            lo, hi = compare.percentile_interval(draws["A"][key] - draws["B"][key])
            covered[key] += lo <= truth <= hi
    assert covered["aucroc_macro"] >= 16 and covered["macro_f1_tuned"] >= 16, covered


def test_bootstrap_excludes_zero_for_a_large_difference_and_is_reproducible():
    rng = np.random.default_rng(3)
    labels, groups = simulated_groups(rng, 1000, 2.0, 0.5)
    draws, _ = compare.bootstrap(groups, labels, resamples=1000, seed=0)
    lo, hi = compare.percentile_interval(draws["A"]["aucroc_macro"] - draws["B"]["aucroc_macro"])
    assert 0 < lo < true_auc(2.0) - true_auc(0.5) < hi
    lo, hi = compare.percentile_interval(draws["A"]["macro_f1_tuned"] - draws["B"]["macro_f1_tuned"])
    assert lo > 0
    again, _ = compare.bootstrap(groups, labels, resamples=1000, seed=0)
    assert np.array_equal(again["A"]["aucroc_macro"], draws["A"]["aucroc_macro"])  # fixed seed, same draws


def test_single_class_resamples_are_skipped_not_fatal():
    rng = np.random.default_rng(4)
    labels, groups = simulated_groups(rng, 60, 1.0, 1.0)
    labels[:, 3] = 0
    labels[0, 3] = 1  # one positive: about a third of resamples miss it
    draws, skipped = compare.bootstrap(groups, labels, resamples=300, seed=0)
    assert 50 < skipped < 200
    assert np.isfinite(draws["A"]["aucroc_macro"]).all()  # the other labels carry those resamples


# ----------------------------------------------------------------------------
# compare.py end to end


def test_compare_writes_report_and_valid_png(tmp_path, capsys):
    from matplotlib.image import imread
    from PIL import Image

    paths = synthetic_runs(tmp_path / "runs", d=(("cls", 2.0), ("mean", 0.8)))
    text = compare.compare(paths, str(tmp_path / "out"), 1000, 0)
    err = capsys.readouterr().err
    assert "| A | pooling=cls | 0, 1 |" in text and "| B | pooling=mean | 0, 1 |" in text
    assert "| A − B | mean AUC |" in text and "yes: A is higher" in text
    assert "f1 policy fitted on these same validation rows as they are" in text
    assert (tmp_path / "out" / "results.md").read_text() == text
    png = tmp_path / "out" / "pooling.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert imread(png).shape == (1000, 1300, 4)
    with Image.open(png) as im:
        im.verify()
    assert err.count("no aim_hash") == 4  # one note per run, nothing fatal


def test_one_group_gives_the_per_group_table_only(tmp_path):
    paths = synthetic_runs(tmp_path / "runs", d=(("cls", 1.0),), seeds=(0, 1, 2))
    text = compare.compare(paths, str(tmp_path / "out"), 1000, 0)
    assert "1 groups" in text and "Per group" in text and "Group against group" not in text
    assert (tmp_path / "out" / "pooling.png").read_bytes()[:8] == PNG_SIGNATURE


def add_config_keys(run_dir, keys):
    """Rewrite a run folder's run.json with these config keys added, as another version of train.py would."""
    with open(os.path.join(run_dir, "run.json")) as f:
        meta = json.load(f)
    meta["config"].update(keys)
    with open(os.path.join(run_dir, "run.json"), "w") as f:
        json.dump(meta, f)


def test_a_key_added_after_a_run_counts_as_its_default(tmp_path):
    old, new, other = synthetic_runs(tmp_path / "runs", d=(("cls", 1.0),), seeds=(0, 1, 2))
    # old: no truncation key (trained before it existed), so it counts as the default, "head"
    for path, extra in ((new, {"truncation": "head"}), (other, {"truncation": "head_tail"})):
        add_config_keys(path, extra)
    text = compare.compare([old, new, other], str(tmp_path / "out"), 1000, 0)
    assert "2 groups" in text  # not 3: the old run joins the one with the default
    assert "| A | truncation=head | 0, 1 |" in text and "| B | truncation=head_tail | 2 |" in text


def test_a_key_config_no_longer_has_keeps_its_runs_apart(tmp_path):
    """run.json files from before 2026-12-01 hold ema_decay, oversample and layer_lr_decay, which Config no longer
    has. Such runs come from another commit (oversample=3 trained differently): they are never pooled with newer
    runs, and runs of that older commit still group among themselves."""
    old0, old1, new0, new1 = synthetic_runs(tmp_path / "runs", d=(("cls", 1.0),), seeds=(0, 1, 2, 3))
    for path, oversample in ((old0, 1), (old1, 1)):
        add_config_keys(path, {"ema_decay": 0.0, "oversample": oversample, "layer_lr_decay": 1.0})
    text = compare.compare([old0, old1, new0, new1], str(tmp_path / "out"), 1000, 0)
    assert "2 groups" in text and "| A | ema_decay=0.0, layer_lr_decay=1.0, oversample=1 | 0, 1 |" in text, text
    on = synthetic_runs(tmp_path / "on", d=(("cls", 1.0),), seeds=(4,))[0]
    add_config_keys(on, {"ema_decay": 0.0, "oversample": 3, "layer_lr_decay": 1.0})
    text = compare.compare([old0, old1, on], str(tmp_path / "out2"), 1000, 0)
    assert "2 groups" in text and "oversample=3" in text, text


def test_the_tuned_thresholds_are_recomputed_from_the_logits(tmp_path):
    """Runs saved by an older tuner (other thresholds in the npz) are tuned as new ones are: one rule for all."""
    path = synthetic_runs(tmp_path / "runs", d=(("cls", 1.0),), seeds=(0,))[0]
    z = dict(np.load(os.path.join(path, "val_predictions.npz")))
    want = compare.load_run(path)["metrics"]["macro_f1_tuned"]
    np.savez(os.path.join(path, "val_predictions.npz"), **{**z, "thresholds": np.full(len(LABELS), 0.99)})
    assert compare.load_run(path)["metrics"]["macro_f1_tuned"] == want


def test_runs_of_another_label_set_are_compared_by_their_own_names(tmp_path):
    """compare.py takes the label names from val_predictions.npz: a model of three labels of its own."""
    from matplotlib.image import imread

    names = ("spam", "abuse", "doxxing")
    rng = np.random.default_rng(8)
    labels = (rng.random((300, 3)) < 0.2).astype(np.uint8)
    shared = rng.standard_normal((300, 3))
    paths = [write_run(tmp_path / f"{pool}_s{s}", synthetic_scores(rng, labels, d, shared), labels, s, pool,
                       names=names) for pool, d in (("cls", 2.0), ("mean", 0.5)) for s in (0, 1)]
    text = compare.compare(paths, str(tmp_path / "out"), 1000, 0)
    assert "| group | spam | abuse | doxxing |" in text and "toxic" not in text
    assert "| A − B | mean AUC |" in text and "yes: A is higher" in text
    run = compare.load_run(paths[0])
    assert run["names"] == list(names) and {"auc_spam", "auc_abuse", "auc_doxxing"} <= set(run["metrics"])
    assert imread(tmp_path / "out" / "pooling.png").shape == (700, 1300, 4)  # one row of three ROC panels


def test_cli_refuses_runs_on_different_rows(tmp_path):
    a, b = synthetic_runs(tmp_path, n=100, seeds=(0,))
    with np.load(os.path.join(b, "val_predictions.npz")) as z:
        write_run(b, z["probs"], z["labels"], 0, "mean", rows=z["rows"] + 1)  # another split
    r = subprocess.run([sys.executable, os.path.join(ROOT, "compare.py"), a, b, "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert b in r.stderr and a in r.stderr and "cannot be paired" in r.stderr
    assert not (tmp_path / "out" / "results.md").exists()


@pytest.mark.parametrize("breakage", ["labels", "label_names", "no_npz", "truncated_npz", "twice", "same_seed",
                                      "resamples"])
def test_bad_input_is_one_line_naming_it(tmp_path, capsys, breakage):
    a, b = synthetic_runs(tmp_path, n=80, seeds=(0,))
    args = [a, b, "--out", str(tmp_path / "out")]
    named = b
    if breakage == "labels":  # same rows, other labels: a different data file
        with np.load(os.path.join(b, "val_predictions.npz")) as z:
            write_run(b, z["probs"], 1 - z["labels"], 0, "mean")
    elif breakage == "label_names":  # same rows and labels, columns named otherwise: another model's outputs
        with np.load(os.path.join(b, "val_predictions.npz")) as z:
            write_run(b, z["probs"], z["labels"], 0, "mean", names=[f"label{j}" for j in range(L)])
    elif breakage == "no_npz":
        os.remove(os.path.join(b, "val_predictions.npz"))
    elif breakage == "truncated_npz":  # a copy cut short: never an unpickling or zip traceback
        npz = open(os.path.join(b, "val_predictions.npz"), "rb").read()
        open(os.path.join(b, "val_predictions.npz"), "wb").write(npz[: len(npz) // 2])
        named = f"{b}/val_predictions.npz: cannot read"
    elif breakage == "twice":
        args = [a, a + "/", "--out", str(tmp_path / "out")]
        named = a
    elif breakage == "same_seed":  # a copy of a run in the same group would count a seed twice
        with np.load(os.path.join(a, "val_predictions.npz")) as z:
            named = write_run(str(tmp_path / "copy"), z["probs"], z["labels"], 0, "cls")
        args = [a, named, "--out", str(tmp_path / "out")]
    else:
        args += ["--resamples", "10"]
        named = "--resamples"
    with pytest.raises(SystemExit) as e:
        compare.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and named in err


def test_failing_aim_attach_warns_and_finishes(tmp_path, capsys):
    repo = tmp_path / "aim"
    (repo / ".aim").mkdir(parents=True)  # looks like a repo, is not one: aim.Run fails
    rng = np.random.default_rng(5)
    labels = (rng.random((80, L)) < 0.3).astype(np.uint8)
    path = write_run(tmp_path / "run", rng.random((80, L)), labels, 0, aim_hash="0123456789abcdef01234567",
                     aim_repo=str(repo))
    compare.compare([path], str(tmp_path / "out"), 1000, 0)
    err = capsys.readouterr().err
    assert "warning:" in err and "aim attach failed" in err
    assert (tmp_path / "out" / "pooling.png").exists()


def test_figure_is_attached_to_the_aim_run(tmp_path):
    aim = pytest.importorskip("aim")
    repo = str(tmp_path / "aim")
    run = aim.Run(repo=repo, experiment="synthetic")
    run_hash = run.hash
    run.close()
    rng = np.random.default_rng(6)
    labels = (rng.random((80, L)) < 0.3).astype(np.uint8)
    path = write_run(tmp_path / "run", rng.random((80, L)), labels, 0, aim_hash=run_hash, aim_repo=repo)
    compare.compare([path], str(tmp_path / "out"), 1000, 0)
    from aim.storage.context import Context

    run = aim.Run(run_hash=run_hash, repo=repo)  # not read_only: that one sees a run only after a reindex
    seq = run.get_image_sequence(compare.AIM_NAME, Context({"compare": os.path.abspath(tmp_path / "out")}))
    (image,) = [values[0] for _, values in seq.data.items()]  # one step, (image, epoch, time) there
    assert image.to_pil_image().size == (1300, 1000)
    run.close()


def test_aim_run_open_in_a_live_training_is_left_alone(tmp_path, capsys):
    pytest.importorskip("aim")
    repo = tmp_path / "aim"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, aim; r = aim.Run(repo=sys.argv[1]); "
                               "print(r.hash, flush=True); time.sleep(300)", str(repo)],
                              stdout=subprocess.PIPE, text=True)
    try:
        run_hash = holder.stdout.readline().strip()
        rng = np.random.default_rng(7)
        labels = (rng.random((80, L)) < 0.3).astype(np.uint8)
        path = write_run(tmp_path / "run", rng.random((80, L)), labels, 0, aim_hash=run_hash, aim_repo=str(repo))
        compare.compare([path], str(tmp_path / "out"), 1000, 0)
        assert "its Aim run is open in a live training; figure not attached" in capsys.readouterr().err
        assert os.path.exists(repo / ".aim" / "locks" / f"{run_hash}.softlock")  # the live run keeps its lock
    finally:
        holder.kill()
        holder.wait()


def test_real_tiny_run_matches_its_checkpoint(tiny_run, tmp_path, capsys):
    """The one real run: compare.py reads train.py's files, and its metrics are the checkpoint's."""
    import torch

    text = compare.compare([str(tiny_run)], str(tmp_path / "out"), 1000, 0)
    best = torch.load(tiny_run / "best.pt", weights_only=True)["metrics"]
    run = compare.load_run(str(tiny_run))
    for key in ("aucroc_macro", "macro_f1", "macro_f1_tuned"):  # probs stored as float32: allow its rounding
        a, b = run["metrics"][key], best[key]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-3), key
    assert "1 runs in 1 groups" in text and "pooling=cls" in text
    assert "no aim_hash" in capsys.readouterr().err
