"""model_card.py: export.py writes MODEL_CARD.md from export.json (format_version 2: policies, base rates and
calibration always there; a hand-written set with known values here); a format_version 1 export is refused."""
import json
import os
import shutil
import subprocess
import sys

import model_card
from common import LABELS
from conftest import POLICIES, ROOT, run_main


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
    for n in LABELS:  # every label's calibration and ECE, from export.json
        assert f"{n} {meta['calibration']['a'][n]:.3f}" in text
        assert f"{n} {meta['validation_at_base_rates']['ece'][n]:.4f}" in text
    assert "training configuration is not recorded" not in text  # export.py passes the checkpoint's config


def test_a_format_version_1_export_is_refused(export_dir, tmp_path, capsys):
    """An export from before format_version 2 (top-level thresholds, no decisions): one line, exit 2, naming its
    export.json and saying to re-export it; no card is written."""
    shutil.copytree(export_dir[0], tmp_path / "old")
    os.remove(tmp_path / "old" / "MODEL_CARD.md")
    meta = json.load(open(tmp_path / "old" / "export.json"))
    old = {k: v for k, v in meta.items() if k not in ("policies", "default_policy", "calibration", "base_rates",
                                                      "validation_at_base_rates")}
    old.update(format_version=1, thresholds=meta["policies"]["f1"]["thresholds"], default_model="int8")
    json.dump(old, open(tmp_path / "old" / "export.json", "w"))
    code, out, err = run_main(capsys, [str(tmp_path / "old")], main=model_card.main)
    path = tmp_path / "old" / "export.json"
    assert code == 2 and out == "" and err.strip().splitlines() == [
        f"error: {path}: format_version 1, this project reads version 2: re-export it with this project's export.py"]
    assert not (tmp_path / "old" / "MODEL_CARD.md").exists()


def test_hand_written_policies_base_rates_and_calibration_are_shown(export_dir):
    meta = json.load(open(os.path.join(export_dir[0], "export.json")))
    meta.update(default_policy="f1", policies=POLICIES, base_rates={"reweighted": True, "rates": {"toxic": 0.0958}},
                calibration={"method": "platt", "a": {"toxic": 1.25}, "b": {"toxic": -2.5}})
    text = model_card.card(meta)
    assert "Decision policies (default: `f1`" in text
    assert "| precision | 0.9 | severe_toxic |  |" in text  # a null threshold: target not reached
    assert "| recall | 0.9 | threat | 0.020 |" in text
    assert "reweighted to these label rates" in text and "toxic 9.6%" in text and "Calibration: `platt`" in text
    assert "a toxic 1.250; b toxic -2.500" in text and "training configuration is not recorded" in text


def test_cli_prints_the_card_and_refuses_a_folder_without_export_json(export_dir, tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "model_card.py"), export_dir[0], "--stdout"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("# Model card") and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, os.path.join(ROOT, "model_card.py"), str(tmp_path)], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "no export.json" in r.stderr
