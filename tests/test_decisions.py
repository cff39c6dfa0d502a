"""decisions.py (base-rate weights, calibration, policies, the thresholds on the plain sigmoid's scale), its config
key and evaluate.py's calibration report. Every function takes the label names of the columns."""
import json
import os

import numpy as np
import pytest

import decisions
import evaluate
from common import LABELS, sigmoid
from conftest import SAMPLE
from metrics import calibration_errors, label_aucs, weighted_f1


def synthetic(n=6000, seed=0, rate=0.25, slope=1.0):
    """Logits of a model calibrated at `rate` (enriched), where the true P(y=1) is sigmoid(slope * logit)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(LABELS))) < rate).astype(np.uint8)
    z = rng.normal(0, 1.5, (n, len(LABELS))) + np.where(y, 1.5, -1.5)
    # y is then drawn from the logit itself, so sigmoid(slope * z + offset) is the truth
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-(slope * z + np.log(rate / (1 - rate)))))).astype(np.uint8)
    return z, y


def test_rates_parse_and_bad_ones_name_the_key():
    assert decisions.parse_rates("kaggle", "k", LABELS) == decisions.KAGGLE_RATES
    assert decisions.parse_rates("none", "k", LABELS) is None
    mine = decisions.parse_rates("toxic=0.2, threat=0.01", "--base_rates", LABELS)
    assert mine["toxic"] == 0.2 and mine["threat"] == 0.01 and mine["insult"] == decisions.KAGGLE_RATES["insult"]
    for bad, said in [("toxic=0", "rate of toxic must be a number in (0, 1)"), ("toxic=1", "(0, 1)"),
                      ("toxic=abc", "got 'abc'"), ("spam=0.1", "'spam=0.1' is not label=rate"), ("0.1", "0.1")]:
        with pytest.raises(decisions.RatesError, match=r"^--base_rates: ") as e:
            decisions.parse_rates(bad, "--base_rates", LABELS)
        assert said in str(e.value)
    assert "with a label among toxic, severe_toxic, obscene, threat, insult, identity_hate" in str(
        pytest.raises(decisions.RatesError, decisions.parse_rates, "spam=0.1", "k", LABELS).value)
    for bad in (0, 1, 1.5, float("nan")):
        with pytest.raises(decisions.RatesError, match="--target_recall: a target must be in"):
            decisions.check_target(bad, "--target_recall")


def test_config_rejects_bad_base_rates(tiny_encoder, tmp_path):
    from config import ConfigError, load_config
    from conftest import tiny_args
    cfg, _ = load_config(tiny_args(tiny_encoder, tmp_path / "r", base_rates="toxic=0.3"))
    assert cfg.base_rates == "toxic=0.3"
    with pytest.raises(ConfigError, match=r"^--base_rates the rate of threat must be a number in \(0, 1\)"):
        load_config(tiny_args(tiny_encoder, tmp_path / "r", base_rates="threat=2"))


def test_rates_of_a_label_set_of_its_own():
    """A run's own labels: "kaggle" gives Kaggle's rate to the labels Kaggle has, a label it lacks keeps the rows'
    own rate (left out of the dict) unless one is given; labels outside the set are refused."""
    names = ("toxic", "spam")
    assert decisions.parse_rates("kaggle", "k", names) == {"toxic": decisions.KAGGLE_RATES["toxic"]}
    assert decisions.parse_rates("spam=0.3", "k", names) == {"toxic": decisions.KAGGLE_RATES["toxic"], "spam": 0.3}
    with pytest.raises(decisions.RatesError) as e:
        decisions.parse_rates("threat=0.1", "k", names)
    assert str(e.value) == "k: 'threat=0.1' is not label=rate with a label among toxic, spam (or kaggle, or none)"
    _, y = synthetic(n=2000)
    w = decisions.rate_weights(y[:, :2], names, decisions.parse_rates("kaggle", "k", names))
    assert (w[:, 0] @ y[:, 0]) / w[:, 0].sum() == pytest.approx(decisions.KAGGLE_RATES["toxic"])
    assert (w[:, 1] == 1).all()  # spam: no rate, the rows as they are


def test_weights_move_each_label_to_its_rate():
    _, y = synthetic()
    w = decisions.rate_weights(y, LABELS, decisions.KAGGLE_RATES)
    for j, name in enumerate(LABELS):
        assert (w[:, j] @ y[:, j]) / w[:, j].sum() == pytest.approx(decisions.KAGGLE_RATES[name])
        assert w[:, j].sum() == pytest.approx(len(y))  # the same total weight: counts stay comparable
    assert (decisions.rate_weights(y, LABELS, None) == 1).all()
    one_class = y.copy()
    one_class[:, 2] = 0  # no positive here: nothing to reweigh, weight 1
    assert (decisions.rate_weights(one_class, LABELS, decisions.KAGGLE_RATES)[:, 2] == 1).all()


def test_calibration_recovers_the_prior_shift_and_keeps_the_ranking():
    """Scores calibrated at an enriched 25% become calibrated at 1% after the fit: the intercept moves by
    the difference of the log odds, the slope stays 1, AUC is unchanged, ECE is small."""
    z, y = synthetic(n=20000)
    rates = {n: 0.01 for n in LABELS}
    w = decisions.rate_weights(y, LABELS, rates)
    cal = decisions.fit_calibration(z, y, LABELS, w)
    assert cal["method"] == "platt" and list(cal["a"]) == list(cal["b"]) == list(LABELS)
    shift = np.log(0.01 / 0.99) - np.log(0.25 / 0.75)
    for name in LABELS:
        assert cal["a"][name] == pytest.approx(1.0, abs=0.06)
        assert cal["b"][name] == pytest.approx(np.log(0.25 / 0.75) + shift, abs=0.15)
    p = decisions.apply_calibration(z, cal, LABELS)
    assert label_aucs(p, y) == pytest.approx(label_aucs(sigmoid(z), y), abs=1e-12)
    _, ece_before = calibration_errors(sigmoid(z), y, w)
    _, ece_after = calibration_errors(p, y, w)
    assert (ece_after < 0.01).all() and (ece_before > 0.1).all()


def test_apply_calibration_reads_the_map_by_label_name():
    """The map is keyed by label: the columns are read in names' order, whatever order the dict has, and the
    identity map (a=1, b=0) is the plain sigmoid. There is no calibration None: every export has a map."""
    z = np.random.default_rng(4).normal(0, 2, (50, 3))
    names = ("spam", "toxic", "threat")
    cal = {"method": "platt", "a": {"threat": 0.5, "spam": 2.0, "toxic": 1.0},
           "b": {"toxic": -1.0, "threat": 0.25, "spam": 0.0}}
    p = decisions.apply_calibration(z, cal, names)
    np.testing.assert_allclose(p, sigmoid(z * [2.0, 1.0, 0.5] + [0.0, -1.0, 0.25]), rtol=1e-12)
    identity = {"method": "platt", "a": dict.fromkeys(names, 1.0), "b": dict.fromkeys(names, 0.0)}
    np.testing.assert_array_equal(decisions.apply_calibration(z, identity, names), sigmoid(z))
    with pytest.raises(TypeError):
        decisions.apply_calibration(z, None, names)
    with pytest.raises(KeyError):  # a label the map does not have is an error, not a silent identity
        decisions.apply_calibration(z, cal, ("spam", "toxic", "insult"))


def test_a_label_without_both_classes_keeps_the_identity_map():
    z, y = synthetic(n=500)
    y[:, 1] = 0
    y[:, 4] = 1
    cal = decisions.fit_calibration(z, y, LABELS, np.ones(y.shape))
    assert (cal["a"]["severe_toxic"], cal["b"]["severe_toxic"]) == (1.0, 0.0)
    assert (cal["a"]["insult"], cal["b"]["insult"]) == (1.0, 0.0)
    assert cal["a"]["toxic"] != 1.0


@pytest.mark.parametrize("rates", ["kaggle", "none"])
def test_raw_thresholds_take_the_same_decisions_on_the_plain_sigmoid(rates):
    """validation.py reports F1 on sigmoid(logits): the calibrated thresholds mapped there flag exactly the rows
    that the calibrated thresholds flag on the calibrated probabilities, for every policy's thresholds."""
    z, y = synthetic(n=3000, seed=5)
    z[:, 2] = 0.3 * z[:, 2] - 2.0  # a label the map stretches (a > 1) and shifts
    fitted = decisions.fit(z, y, LABELS, decisions.parse_rates(rates, "k", LABELS))
    calibrated = decisions.apply_calibration(z, fitted["calibration"], LABELS)
    assert fitted["calibration"]["a"]["obscene"] > 2  # the case is exercised
    quantiles = np.array([np.quantile(calibrated[:, j], 0.6 + 0.07 * j) for j in range(len(LABELS))])
    for t in ([fitted["policies"]["f1"]["thresholds"][n] for n in LABELS], quantiles):
        t = np.asarray(t, dtype=np.float64)
        raw = decisions.raw_thresholds(fitted["calibration"], t, LABELS)
        assert raw.shape == (len(LABELS),) and ((0 < raw) & (raw < 1)).all()
        clear = np.abs(calibrated - t) > 1e-9  # rows on a threshold itself are left to float rounding
        assert clear.mean() > 0.99
        np.testing.assert_array_equal((sigmoid(z) >= raw)[clear], (calibrated >= t)[clear])
        assert (sigmoid(z) >= raw).any(0).all() and not (sigmoid(z) >= raw).all(0).any()  # each flags some rows
    identity = {"a": dict.fromkeys(LABELS, 1.0), "b": dict.fromkeys(LABELS, 0.0)}
    np.testing.assert_allclose(decisions.raw_thresholds(identity, [0.3] * 6, LABELS), 0.3, rtol=1e-12)
    by_hand = {"a": dict.fromkeys(LABELS, 2.0), "b": dict.fromkeys(LABELS, -1.0)}  # sigmoid(2z - 1) >= 0.5: z >= 0.5
    np.testing.assert_allclose(decisions.raw_thresholds(by_hand, [0.5] * 6, LABELS), sigmoid(0.5), rtol=1e-12)


def test_the_slope_is_bounded_and_never_flips_the_ranking():
    """Logits that barely vary (or run the wrong way) do not get stretched by hundreds or inverted."""
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.3).astype(float)
    for z in (1e-4 * (y - 0.5) + 1e-5 * rng.normal(size=200), -(y - 0.5) + 0.1 * rng.normal(size=200), np.zeros(200)):
        a, b = decisions.fit_platt(z, y, np.ones(200))
        assert decisions.A_MIN <= a <= decisions.A_MAX and np.isfinite(b)


@pytest.mark.parametrize("shift", [0.0, 2.0, -3.0, 6.0])
def test_the_fit_is_the_weighted_optimum_wherever_the_logits_sit(shift):
    """Logits shifted as pos_weight shifts them: the fit lands on the weighted maximum likelihood (checked
    against scikit-learn's), not on a bound the Newton steps overshot to."""
    from sklearn.linear_model import LogisticRegression
    z, y = synthetic(n=8000, seed=3)
    w = decisions.rate_weights(y, LABELS, decisions.KAGGLE_RATES)[:, 0]
    z, y = z[:, 0] + shift, y[:, 0].astype(float)
    a, b = decisions.fit_platt(z, y, w)
    ref = LogisticRegression(C=1e6, tol=1e-10, max_iter=1000).fit(z[:, None], y, sample_weight=w)
    assert a == pytest.approx(ref.coef_[0, 0], rel=1e-3) and b == pytest.approx(ref.intercept_[0], abs=1e-2)
    assert a == pytest.approx(1.0, abs=0.08)  # the synthetic model is calibrated up to the shift


def test_policies_reach_their_targets_or_say_they_cannot():
    z, y = synthetic(n=8000)
    fitted = decisions.fit(z, y, LABELS, {n: 0.1 for n in LABELS}, target_precision=0.8, target_recall=0.9)
    pol = fitted["policies"]
    for name in LABELS:
        f1_t, p_t, r_t = (pol[k]["thresholds"][name] for k in ("f1", "precision", "recall"))
        assert r_t < f1_t < p_t  # the review queue flags more than F1, automatic action less
        assert pol["precision"]["precision"][name] >= 0.8 and pol["recall"]["recall"][name] >= 0.9
    unreachable = decisions.fit(z, y, LABELS, decisions.KAGGLE_RATES, target_precision=0.999)["policies"]["precision"]
    assert set(unreachable["thresholds"].values()) == {None} and unreachable["recall"]["toxic"] == 0.0
    assert set(unreachable["unreached"]) == set(LABELS) and "95% confidence" in unreachable["unreached"]["toxic"]
    few = y.copy()
    few[5:, 3] = 0  # threat: 5 validation positives at most
    few[:4, 3] = 1
    few[4, 3] = 0
    few_fit = decisions.fit(z, few, LABELS, decisions.KAGGLE_RATES)["policies"]
    assert few_fit["recall"]["unreached"]["threat"] == "fewer than 5 validation positives"
    assert few_fit["f1"]["thresholds"]["threat"] == 0.5 and "unreached" not in few_fit["f1"]  # f1 keeps 0.5
    json.dumps(fitted, allow_nan=False)  # export.json takes it as it is


def enriched_argmax(p, y, grid=np.round(np.arange(0.05, 0.951, 0.01), 2), min_positives=10):
    """The thresholds shipped before 2026-12-02 (the deleted metrics.tune_thresholds): per label the grid value with
    the best F1 of the plain sigmoid on the rows as they are, ties nearest 0.5; 0.5 under min_positives positives."""
    out = np.full(y.shape[1], 0.5)
    for j in range(y.shape[1]):
        if y[:, j].sum() < min_positives:
            continue
        f1 = np.array([weighted_f1(p[:, j:j + 1], y[:, j:j + 1], [t], np.ones((len(y), 1)))[0][0] for t in grid])
        best = np.flatnonzero(f1 == f1.max())
        out[j] = grid[best[np.argmin(np.abs(grid[best] - 0.5))]]
    return out


def test_half_split_thresholds_lose_less_than_the_enriched_argmax():
    """Tuned on one half, scored on the other at Kaggle's rates: the calibrated expected-F1 threshold
    loses less F1 against the other half's own best than the old enriched-rate grid argmax did."""
    z, y = synthetic(n=4000, seed=1)
    a, b = np.arange(0, 4000, 2), np.arange(1, 4000, 2)
    wb = decisions.rate_weights(y[b], LABELS, decisions.KAGGLE_RATES)
    fitted = decisions.fit(z[a], y[a], LABELS, decisions.KAGGLE_RATES)
    pb = decisions.apply_calibration(z[b], fitted["calibration"], LABELS)
    new, _ = weighted_f1(pb, y[b], [fitted["policies"]["f1"]["thresholds"][n] for n in LABELS], wb)
    old, _ = weighted_f1(sigmoid(z[b]), y[b], enriched_argmax(sigmoid(z[a]), y[a]), wb)
    assert new.mean() > old.mean() + 0.02


def test_fit_reports_its_validation_summary_at_the_f1_thresholds():
    """fit's "validation": the rows, macro/micro F1 and per-label F1, Brier and ECE of the calibrated scores at
    the f1 policy's thresholds under the rate weights: what metrics.weighted_f1 and calibration_errors give."""
    z, y = synthetic(n=3000, seed=2)
    rates = decisions.KAGGLE_RATES
    fitted = decisions.fit(z, y, LABELS, rates)
    v = fitted["validation"]
    assert set(v) == {"rows", "macro_f1", "micro_f1", "f1", "brier", "ece"} and v["rows"] == 3000
    w = decisions.rate_weights(y, LABELS, rates)
    p = decisions.apply_calibration(z, fitted["calibration"], LABELS)
    f1, micro = weighted_f1(p, y, [fitted["policies"]["f1"]["thresholds"][n] for n in LABELS], w)
    brier, ece = calibration_errors(p, y, w)
    assert v["macro_f1"] == pytest.approx(f1.mean(), rel=1e-12) and v["micro_f1"] == pytest.approx(micro, rel=1e-12)
    for j, n in enumerate(LABELS):
        assert (v["f1"][n], v["brier"][n], v["ece"][n]) == pytest.approx((f1[j], brier[j], ece[j]), rel=1e-12)
    assert fitted["base_rates"] == {"reweighted": True, "rates": {n: pytest.approx(rates[n]) for n in LABELS}}
    own = decisions.fit(z, y, LABELS, None)["base_rates"]
    assert own["reweighted"] is False and own["rates"]["toxic"] == pytest.approx(y[:, 0].mean())
    json.dumps(fitted, allow_nan=False)  # plain floats: export.json takes it as it is


def test_evaluate_reports_brier_and_ece_at_the_base_rates_and_draws_the_figure(export_dir, tmp_path,
                                                                                 capsys):
    m, probs, labels = evaluate.run(export_dir[0], data=SAMPLE, figure=str(tmp_path / "rel.png"))
    printed = capsys.readouterr().out
    w = decisions.rate_weights(labels, LABELS, decisions.KAGGLE_RATES)  # the export's rates: the config's default
    brier, ece = calibration_errors(probs, labels, w)
    for j, name in enumerate(LABELS):
        assert m[f"brier_{name}_at_rates"] == pytest.approx(brier[j]) and m[f"ece_{name}_at_rates"] == pytest.approx(ece[j])
        # ECE by hand: bins of width 0.1, each |weighted mean score - weighted fraction positive| times its weight
        p, y, wj = probs[:, j], labels[:, j], w[:, j]
        k = np.minimum((p * 10).astype(int), 9)
        by_hand = sum(abs((wj[k == i] @ p[k == i]) - (wj[k == i] @ y[k == i])) for i in range(10)) / wj.sum()
        assert ece[j] == pytest.approx(by_hand)
    assert "Brier" in printed and "ECE" in printed and "at base rates: toxic 0.09584" in printed
    assert open(tmp_path / "rel.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    m_none, _, _ = evaluate.run(export_dir[0], data=SAMPLE, base_rates="none")
    _, ece_none = calibration_errors(probs, labels, np.ones_like(w))
    assert [m_none[f"ece_{n}_at_rates"] for n in LABELS] == pytest.approx(ece_none)


def test_evaluate_bad_rates_exit_2(export_dir, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--model", export_dir[0], "--data", SAMPLE, "--base_rates", "toxic=-1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --base_rates: the rate of toxic"), err


def test_calibration_bench_quick(tmp_path):
    """bench/calibration.py --quick: a tiny run's before/after tables, the half-split test and the policies."""
    import subprocess
    import sys

    from conftest import ROOT
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "calibration.py"), "--quick", "--out",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.load(open(tmp_path / "calibration.quick.json"))
    (figures,) = data["runs"].values()
    assert set(figures["cross_fitted"]) == {"enriched", "kaggle"}
    assert set(figures["half_split_lost"]) == {"before", "argmax", "after"}
    assert "Half-split threshold test" in r.stdout and "| precision (0.9) |" in r.stdout
