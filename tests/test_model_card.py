"""model_card.py: export.py writes MODEL_CARD.md from export.json; policies, base rates and calibration are
shown where export.json has them (issue 25's keys, written by hand here) and said absent where it does not."""
import json
import os
import subprocess
import sys

from conftest import POLICIES

import model_card
from conftest import ROOT
from data import LABELS


def test_export_writes_the_card(export_dir):
    text = open(os.path.join(export_dir[0], "MODEL_CARD.md")).read()
    meta = json.load(open(os.path.join(export_dir[0], "export.json")))
    assert text.startswith("# Model card") and "## Intended use" in text
    for needle in ("not for automatic removal", "## Training data", "toxic against 9.58% in Kaggle's full",
                   "English only", "Wikipedia talk pages", "Decision policies (default: `f1`", "Base rates: the "
                   "validation rows reweighted to", "Calibration: `platt` per label", "Expected calibration error",
                   "int8 against fp32 on export.py's parity batch: decisions agree", "onnxruntime-int8", "MIT"):
        assert needle in text, needle
    for n in LABELS:
        assert f"| {n} | {meta['checkpoint']['validation_metrics'][f'auc_{n}']:.4f} |" in text
    # an export from before the decisions: each said absent
    old = {k: v for k, v in meta.items() if k not in ("policies", "default_policy", "base_rates", "calibration",
                                                      "validation_at_base_rates")}
    text = model_card.card(old)
    for needle in ("no decision policies", "No base rates", "No calibration"):
        assert needle in text, needle


def test_policies_base_rates_and_calibration_when_present(export_dir):
    meta = json.load(open(os.path.join(export_dir[0], "export.json")))
    meta.update(default_policy="f1", policies=POLICIES, base_rates={"reweighted": True, "rates": {"toxic": 0.0958}},
                calibration={"method": "platt", "a": {"toxic": 1.25}, "b": {"toxic": -2.5}})
    text = model_card.card(meta)
    assert "no decision policies" not in text and "Decision policies (default: `f1`" in text
    assert "| precision | 0.9 | severe_toxic |  |" in text  # a null threshold: target not reached
    assert "| recall | 0.9 | threat | 0.020 |" in text
    assert "reweighted to these label rates" in text and "toxic 9.6%" in text and "Calibration: `platt`" in text
    assert "a toxic 1.250; b toxic -2.500" in text and "training configuration is not recorded" in text


def test_cli_rewrites_an_old_export(export_dir, tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "model_card.py"), export_dir[0], "--stdout"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("# Model card") and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, os.path.join(ROOT, "model_card.py"), str(tmp_path)], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "no export.json" in r.stderr
