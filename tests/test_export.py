"""export.py: one self-contained ONNX file that matches PyTorch, an int8 model that runs, export.json
(format_version 2), and one-line errors. The export of the tiny run is conftest's export_dir, shared with
other test files; the checks export.py runs (parity, every runtime) live in checks.py."""
import contextlib
import io
import json
import os

import numpy as np
import pytest

import checks
import export
import scoring
from common import LABELS


def torch_probs(ckpt_path, ids, mask, calibration):
    """PyTorch's probabilities under the export's calibration map."""
    import torch

    import decisions
    from checkpoint import load_checkpoint, model_from_checkpoint
    model = model_from_checkpoint(load_checkpoint(ckpt_path))
    with torch.no_grad():
        z = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    return decisions.apply_calibration(z, calibration, LABELS)


def ragged_batch(rng, batch, width, vocab=30000):
    """Random ids with [CLS]/[SEP] and right padding of varied lengths (one row unpadded)."""
    ids = np.zeros((batch, width), dtype=np.int64)
    mask = np.zeros((batch, width), dtype=np.int64)
    for i in range(batch):
        n = width if i == 0 else int(rng.integers(2, width + 1))
        ids[i, :n] = np.concatenate([[101], rng.integers(1000, vocab, n - 2), [102]])
        mask[i, :n] = 1
    return ids, mask


# ----------------------------------------------------------------------------

def test_export_writes_one_self_contained_onnx_file(export_dir):
    import onnx
    out, printed = export_dir
    assert sorted(os.listdir(out)) == ["MODEL_CARD.md", "export.json", "model.int8.onnx", "model.onnx", "tokenizer.json"]
    assert not [f for f in os.listdir(os.path.dirname(out)) if f.startswith(".")]  # no temporary folder left
    m = onnx.load(os.path.join(out, "model.onnx"), load_external_data=False)
    assert not [t.name for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    inputs = {i.name: i.type.tensor_type for i in m.graph.input}
    assert set(inputs) == {"input_ids", "attention_mask"}
    for t in inputs.values():
        assert t.elem_type == onnx.TensorProto.INT64
        assert all(d.dim_param for d in t.shape.dim)  # batch and sequence are both dynamic
    assert [o.name for o in m.graph.output] == ["probs"]
    assert "fp32 parity: max abs diff" in printed and "int8:" in printed and "agree" in printed


def test_export_json_carries_what_predict_needs(export_dir, tiny_run):
    import torch
    ckpt = torch.load(tiny_run / "best.pt", weights_only=True)
    meta = json.load(open(os.path.join(export_dir[0], "export.json")))
    assert meta["format_version"] == scoring.FORMAT_VERSION == 2
    assert meta["labels"] == list(LABELS) == ckpt["model_config"]["labels"]
    assert not [k for k in scoring.META_KEYS if k not in meta]
    assert "thresholds" not in meta and "default_model" not in meta  # version 1's keys: the policies say it now
    assert meta["max_length"] == ckpt["config"]["max_length"]
    assert meta["pooling"] == "cls" and meta["encoder"] == ckpt["config"]["encoder"]
    assert meta["default_policy"] == "f1" and set(meta["policies"]) == {"f1", "precision", "recall"}
    assert meta["checkpoint"]["step"] == ckpt["step"]
    assert meta["checkpoint"]["validation_metrics"] == pytest.approx(ckpt["metrics"])
    assert meta["models"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert meta["prefix_ids"] == [101] and meta["suffix_ids"] == [102]  # BERT's [CLS] ... [SEP]
    assert meta["parity"]["fp32_max_abs_diff"] <= 1e-4
    (b1, t1), (b2, t2) = meta["parity"]["batches"]  # traced on, and one of another size and length
    assert b2 < b1 and t2 < t1 and meta["parity"]["windows"] == b1


def test_every_runtime_is_checked_on_the_checkpoints_validation_rows(export_dir, tiny_run):
    """Not 13 parity windows: the 80 validation rows of the sample, scored through scoring.py."""
    import runtimes
    meta = json.load(open(os.path.join(export_dir[0], "export.json")))
    checks = meta["runtime_checks"]
    expected = ["onnxruntime-fp32", "onnxruntime-int8"] + (["openvino"] if runtimes.installed("openvino") else [])
    assert sorted(checks) == sorted(expected)
    assert checks["onnxruntime-fp32"]["auc_drop_vs_fp32"] == 0 and checks["onnxruntime-fp32"]["decision_agreement"] == 1
    for name, c in checks.items():
        assert c["rows"] == 80 and 0 <= c["decision_agreement"] <= 1, name
        assert c["ok"] == (c["auc_drop_vs_fp32"] <= runtimes.MAX_AUC_DROP), name
    assert "onnxruntime-int8: mean AUC" in export_dir[1] and "validation rows" in export_dir[1]


def test_a_runtime_that_loses_auc_is_never_the_default(tiny_run, tmp_path, monkeypatch):
    import runtimes
    monkeypatch.setattr(checks, "MAX_AUC_DROP", -1.0)  # every runtime but the fp32 reference now "loses"
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        export.main(["--checkpoint", str(tiny_run / "best.pt"), "--out", str(tmp_path / "e"), "--quantize", "int8",
                     "--check_rows", "40"])
    meta = json.load(open(tmp_path / "e" / "export.json"))
    assert meta["runtime_checks"]["onnxruntime-fp32"]["ok"] and not meta["runtime_checks"]["onnxruntime-int8"]["ok"]
    assert meta["runtime_checks"]["onnxruntime-int8"]["rows"] == 40
    assert "predict.py will not pick it" in buf.getvalue()
    for flags in ({"avx2"}, {"avx2", "avx512_bf16"}):  # whatever the CPU: fp32, the checked reference
        assert runtimes.choose(meta, flags)[0] == "onnxruntime-fp32"


def test_predict_windows_are_as_long_as_validation_saw(tiny_run, tmp_path):
    """A config with eval_max_length: its thresholds were tuned on that much text, so predict.py's
    windows are that long too."""
    import torch

    from checkpoint import save_checkpoint
    ckpt = torch.load(tiny_run / "best.pt", weights_only=True)
    ckpt["config"] = {**ckpt["config"], "eval_max_length": 2 * ckpt["config"]["max_length"]}
    save_checkpoint(ckpt, str(tmp_path / "best.pt"))
    with contextlib.redirect_stdout(io.StringIO()):
        meta = export.export(str(tmp_path / "best.pt"), str(tmp_path / "out"))
    assert meta["max_length"] == 2 * ckpt["config"]["max_length"]
    assert json.load(open(tmp_path / "out" / "export.json"))["max_length"] == meta["max_length"]


def test_fp32_parity_on_new_shapes_and_int8_runs(export_dir, tiny_run):
    """Batch sizes, lengths and paddings the trace never saw: within 1e-4 of PyTorch."""
    import onnxruntime as ort
    out = export_dir[0]
    calibration = json.load(open(os.path.join(out, "export.json")))["calibration"]
    rng = np.random.default_rng(0)
    for batch, width in [(5, 77), (1, 3), (9, 128)]:
        ids, mask = ragged_batch(rng, batch, width)
        ref = torch_probs(str(tiny_run / "best.pt"), ids, mask, calibration)
        got = ort.InferenceSession(os.path.join(out, "model.onnx")).run(
            ["probs"], {"input_ids": ids, "attention_mask": mask})[0]
        assert got.shape == (batch, 6)
        assert np.abs(got - ref).max() <= 1e-4
        q = ort.InferenceSession(os.path.join(out, "model.int8.onnx")).run(
            ["probs"], {"input_ids": ids, "attention_mask": mask})[0]
        assert q.shape == (batch, 6) and np.isfinite(q).all()
        a = np.array([calibration["a"][n] for n in LABELS])  # int8's error, before the calibration stretches it
        q, g = np.clip(q, 1e-6, 1 - 1e-6), np.clip(got, 1e-6, 1 - 1e-6)  # float32 may round a score to 0 or 1
        assert np.abs((np.log(q / (1 - q)) - np.log(g / (1 - g))) / a).max() < 0.2


def test_failed_parity_publishes_nothing(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checks, "PARITY_TOL", -1.0)  # every export now "fails" its check
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as e:
        export.main(["--checkpoint", str(tiny_run / "best.pt"), "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disagree" in err[0] and "Traceback" not in err[0]
    assert os.listdir(tmp_path) == []  # neither the folder nor its temporary twin


def test_parity_is_checked_on_a_second_shape(tiny_run, tmp_path, monkeypatch, capsys):
    """Besides the batch it was traced on, the graph is checked on one of another batch size and length,
    one row unpadded and others padded: a graph wrong only there publishes nothing."""
    real, seen = checks.onnx_probs, []

    def wrong_on_the_second(path, ids, mask):
        seen.append(mask)
        return real(path, ids, mask) + (0.5 if len(seen) == 2 else 0.0)
    monkeypatch.setattr(checks, "onnx_probs", wrong_on_the_second)
    msg = one_line_error(capsys, ["--checkpoint", str(tiny_run / "best.pt"), "--out", str(tmp_path / "never")])
    assert "ONNX and PyTorch disagree by 5.00e-01" in msg and "nothing written" in msg
    assert os.listdir(tmp_path) == []
    first, second = seen
    assert second.shape[0] < first.shape[0] and second.shape[1] < first.shape[1]
    assert second.all(1).any() and not second.all()


def test_a_checkpoint_without_validation_logits_is_refused(tiny_run, tmp_path, capsys):
    """The decisions are fitted on validation logits: a last.pt (training state, none) is refused with one
    line and exit 2, naming it and best.pt, and nothing is written; so is a best.pt whose logits were removed."""
    import torch

    from checkpoint import save_checkpoint
    last = torch.load(tiny_run / "last.pt", weights_only=True)
    assert "validation" not in last and "optimizer" in last
    best = torch.load(tiny_run / "best.pt", weights_only=True)
    save_checkpoint({k: v for k, v in best.items() if k != "validation"}, str(tmp_path / "stripped.pt"))
    for ckpt in (tmp_path / "stripped.pt", tiny_run / "last.pt"):
        out = tmp_path / f"never_{ckpt.stem}"
        msg = one_line_error(capsys, ["--checkpoint", str(ckpt), "--out", str(out)])
        assert msg.startswith(f"error: {ckpt}: no validation logits") and "export the run's best.pt" in msg, msg
        assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["stripped.pt"]  # no temporary folder either


def one_line_error(capsys, argv):
    with pytest.raises(SystemExit) as e:
        export.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_missing_or_unreadable_checkpoint(tmp_path, capsys):
    assert "nope.pt: no such checkpoint" in one_line_error(capsys, ["--checkpoint", str(tmp_path / "nope.pt")])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert f"{junk}: unreadable checkpoint" in one_line_error(capsys, ["--checkpoint", str(junk)])


def test_default_checkpoints_come_from_the_configs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no runs/ here
    msg = one_line_error(capsys, [])
    assert os.path.join("runs", "base", "best.pt") in msg and "configs/base.json" in msg
    msg = one_line_error(capsys, ["--avg"])
    assert os.path.join("runs", "average", "best.pt") in msg and "configs/average.json" in msg


def test_out_folder_of_other_files_is_refused(tiny_run, tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    msg = one_line_error(capsys, ["--checkpoint", str(tiny_run / "best.pt"), "--out", str(tmp_path)])
    assert "not an export folder" in msg
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_export_ships_calibration_and_policies_at_kaggles_rates(export_dir, tiny_run):
    """The decisions are fitted on best.pt's validation logits at Kaggle's full-set rates (the config's
    default), and the graph outputs sigmoid(a * logit + b): the calibrated scores themselves."""
    import numpy as np
    import torch

    import decisions
    ckpt = torch.load(tiny_run / "best.pt", weights_only=True)
    meta = json.load(open(os.path.join(export_dir[0], "export.json")))
    assert meta["base_rates"] == {"reweighted": True, "rates": pytest.approx(decisions.KAGGLE_RATES)}
    logits, labels = ckpt["validation"]["logits"].numpy(), ckpt["validation"]["labels"].numpy()
    want = decisions.fit(logits.astype(np.float64), labels, list(LABELS), decisions.KAGGLE_RATES)
    assert meta["calibration"]["method"] == "platt"
    assert meta["calibration"]["a"] == pytest.approx(want["calibration"]["a"])
    assert meta["calibration"]["b"] == pytest.approx(want["calibration"]["b"])
    for name in ("f1", "precision", "recall"):  # grid values: exact through JSON; None where unreached
        assert meta["policies"][name]["thresholds"] == want["policies"][name]["thresholds"], name
    assert meta["policies"]["precision"]["target"] == 0.9 and meta["policies"]["recall"]["target"] == 0.9
    for name in ("f1", "precision", "recall"):
        assert set(meta["policies"][name]["thresholds"]) == set(LABELS)
        assert set(meta["policies"][name]["precision"]) == set(LABELS) == set(meta["policies"][name]["recall"])
    assert set(meta["validation_at_base_rates"]["ece"]) == set(LABELS)
    assert meta["validation_at_base_rates"]["rows"] == len(labels)
    assert meta["validation_at_base_rates"]["macro_f1"] == pytest.approx(want["validation"]["macro_f1"])
    # the graph applies the map: its scores on the parity batch equal the calibrated torch logits
    from checkpoint import model_from_checkpoint
    ids, mask = checks.parity_batches(*_tokenizer_bits(export_dir[0], meta))[0]
    with torch.no_grad():
        z = model_from_checkpoint(ckpt)(torch.from_numpy(ids), torch.from_numpy(mask)).double().numpy()
    got = checks.onnx_probs(os.path.join(export_dir[0], "model.onnx"), ids, mask)
    assert np.abs(got - decisions.apply_calibration(z, meta["calibration"], LABELS)).max() < 1e-4


def _tokenizer_bits(folder, meta):
    from tokenizers import Tokenizer
    return (Tokenizer.from_file(os.path.join(folder, "tokenizer.json")), meta["max_length"], meta["prefix_ids"],
            meta["suffix_ids"], meta["pad_id"])


@pytest.mark.parametrize("flag, value, named", [("--base_rates", "toxic=1.5", "--base_rates: the rate of toxic"),
                                                ("--base_rates", "spam=0.1", "--base_rates: 'spam=0.1'"),
                                                ("--target_precision", "1.2", "--target_precision: a target")])
def test_bad_rates_and_targets_exit_2_naming_the_flag(tiny_run, tmp_path, capsys, flag, value, named):
    msg = one_line_error(capsys, ["--checkpoint", str(tiny_run / "best.pt"), "--out", str(tmp_path / "e"), flag, value])
    assert msg.startswith(f"error: {named}"), msg
    assert not os.path.exists(tmp_path / "e")
