"""decisions.py (base-rate weights, calibration, policies), its config key and evaluate.py's calibration report."""
import json
import os

import numpy as np
import pytest

import decisions
import evaluate
from conftest import SAMPLE
from data import LABELS


def synthetic(n=6000, seed=0, rate=0.25, slope=1.0):
    """Logits of a model calibrated at `rate` (enriched), where the true P(y=1) is sigmoid(slope * logit)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(LABELS))) < rate).astype(np.uint8)
    z = rng.normal(0, 1.5, (n, len(LABELS))) + np.where(y, 1.5, -1.5)
    # y is then drawn from the logit itself, so sigmoid(slope * z + offset) is the truth
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-(slope * z + np.log(rate / (1 - rate)))))).astype(np.uint8)
    return z, y


def test_rates_parse_and_bad_ones_name_the_key():
    assert decisions.parse_rates("kaggle", "k") == decisions.KAGGLE_RATES
    assert decisions.parse_rates("none", "k") is None
    mine = decisions.parse_rates("toxic=0.2, threat=0.01", "--base_rates")
    assert mine["toxic"] == 0.2 and mine["threat"] == 0.01 and mine["insult"] == decisions.KAGGLE_RATES["insult"]
    for bad, said in [("toxic=0", "rate of toxic must be a number in (0, 1)"), ("toxic=1", "(0, 1)"),
                      ("toxic=abc", "got 'abc'"), ("spam=0.1", "'spam=0.1' is not label=rate"), ("0.1", "0.1")]:
        with pytest.raises(decisions.RatesError, match=r"^--base_rates: ") as e:
            decisions.parse_rates(bad, "--base_rates")
        assert said in str(e.value)
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


def test_weights_move_each_label_to_its_rate():
    _, y = synthetic()
    w = decisions.rate_weights(y, decisions.KAGGLE_RATES)
    for j, name in enumerate(LABELS):
        assert (w[:, j] @ y[:, j]) / w[:, j].sum() == pytest.approx(decisions.KAGGLE_RATES[name])
        assert w[:, j].sum() == pytest.approx(len(y))  # the same total weight: counts stay comparable
    assert (decisions.rate_weights(y, None) == 1).all()


def test_calibration_recovers_the_prior_shift_and_keeps_the_ranking():
    """Scores calibrated at an enriched 25% become calibrated at 1% after the fit: the intercept moves by
    the difference of the log odds, the slope stays 1, AUC is unchanged, ECE is small."""
    from metrics import label_aucs
    z, y = synthetic(n=20000)
    rates = {n: 0.01 for n in LABELS}
    w = decisions.rate_weights(y, rates)
    cal = decisions.fit_calibration(z, y, w)
    shift = np.log(0.01 / 0.99) - np.log(0.25 / 0.75)
    for name in LABELS:
        assert cal["a"][name] == pytest.approx(1.0, abs=0.06)
        assert cal["b"][name] == pytest.approx(np.log(0.25 / 0.75) + shift, abs=0.15)
    p = decisions.apply_calibration(z, cal)
    assert label_aucs(p, y) == pytest.approx(label_aucs(1 / (1 + np.exp(-z)), y), abs=1e-12)
    _, ece_before = decisions.calibration_errors(1 / (1 + np.exp(-z)), y, w)
    _, ece_after = decisions.calibration_errors(p, y, w)
    assert (ece_after < 0.01).all() and (ece_before > 0.1).all()


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
    w = decisions.rate_weights(y, decisions.KAGGLE_RATES)[:, 0]
    z, y = z[:, 0] + shift, y[:, 0].astype(float)
    a, b = decisions.fit_platt(z, y, w)
    ref = LogisticRegression(C=1e6, tol=1e-10, max_iter=1000).fit(z[:, None], y, sample_weight=w)
    assert a == pytest.approx(ref.coef_[0, 0], rel=1e-3) and b == pytest.approx(ref.intercept_[0], abs=1e-2)
    assert a == pytest.approx(1.0, abs=0.08)  # the synthetic model is calibrated up to the shift


def test_policies_reach_their_targets_or_say_they_cannot():
    z, y = synthetic(n=8000)
    fitted = decisions.fit(z, y, {n: 0.1 for n in LABELS}, target_precision=0.8, target_recall=0.9)
    pol = fitted["policies"]
    for name in LABELS:
        f1_t, p_t, r_t = (pol[k]["thresholds"][name] for k in ("f1", "precision", "recall"))
        assert r_t < f1_t < p_t  # the review queue flags more than F1, automatic action less
        assert pol["precision"]["precision"][name] >= 0.8 and pol["recall"]["recall"][name] >= 0.9
    unreachable = decisions.fit(z, y, decisions.KAGGLE_RATES, target_precision=0.999)["policies"]["precision"]
    assert set(unreachable["thresholds"].values()) == {None} and unreachable["recall"]["toxic"] == 0.0
    assert set(unreachable["unreached"]) == set(LABELS) and "95% confidence" in unreachable["unreached"]["toxic"]
    few = y.copy()
    few[5:, 3] = 0  # threat: 5 validation positives at most
    few[:4, 3] = 1
    few[4, 3] = 0
    reason = decisions.fit(z, few, decisions.KAGGLE_RATES)["policies"]["recall"]["unreached"]["threat"]
    assert reason == "fewer than 5 validation positives"
    json.dumps(fitted, allow_nan=False)  # export.json takes it as it is


def test_half_split_thresholds_lose_less_than_the_enriched_argmax():
    """Tuned on one half, scored on the other at Kaggle's rates: the calibrated expected-F1 threshold
    loses less F1 against the other half's own best than today's enriched-rate grid argmax did."""
    from metrics import tune_thresholds
    z, y = synthetic(n=4000, seed=1)
    a, b = np.arange(0, 4000, 2), np.arange(1, 4000, 2)
    wb = decisions.rate_weights(y[b], decisions.KAGGLE_RATES)
    fitted = decisions.fit(z[a], y[a], decisions.KAGGLE_RATES)
    pb = decisions.apply_calibration(z[b], fitted["calibration"])
    new, _ = decisions.weighted_f1(pb, y[b], wb, [fitted["policies"]["f1"]["thresholds"][n] for n in LABELS])
    old, _ = decisions.weighted_f1(1 / (1 + np.exp(-z[b])), y[b], wb, tune_thresholds(1 / (1 + np.exp(-z[a])), y[a]))
    assert new.mean() > old.mean() + 0.02


def test_evaluate_reports_brier_and_ece_at_the_base_rates_and_draws_the_figure(export_dir, tmp_path,
                                                                                 capsys):
    m, probs, labels = evaluate.run(export_dir[0], data=SAMPLE, figure=str(tmp_path / "rel.png"))
    printed = capsys.readouterr().out
    w = decisions.rate_weights(labels, decisions.KAGGLE_RATES)  # the export's rates: the config's default
    brier, ece = decisions.calibration_errors(probs, labels, w)
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
    _, ece_none = decisions.calibration_errors(probs, labels, np.ones_like(w))
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
