"""Export a trained checkpoint to ONNX for CPU serving with predict.py (no torch needed there).

    python export.py                                   # runs/base/best.pt (configs/base.json) -> exports/base/
    python export.py --avg                             # runs/average/best.pt (configs/average.json, mean pooling)
    python export.py --checkpoint runs/mini/best.pt    # any checkpoint -> exports/mini/
    python export.py --checkpoint runs/mini/best.pt --out exports/mini --quantize int8
    python export.py --checkpoint runs/mini/best.pt --base_rates toxic=0.02,threat=0.001   # your community

Writes into the output folder (replaced as a whole, and only once every check has passed):
  model.onnx       fp32, one self-contained file (no .onnx.data); inputs input_ids, attention_mask
                   (int64, dynamic batch and sequence axes), output probs (B, 6), sigmoid inside.
  model.int8.onnx  with --quantize int8: dynamic quantization (int8 weights per channel, 7-bit range
                   for CPUs without VNNI; see quantize_int8), about 1/4 the size, saved already
                   optimized for onnxruntime (its fused com.microsoft ops: onnxruntime only, while
                   model.onnx is plain ONNX); predict.py runs it where it is the fastest (runtimes.py).
  tokenizer.json   the encoder's tokenizer, padding and truncation off (predict.py makes windows).
  export.json      format_version, labels, max_length (the config's eval_max_length if set: the
                   window predict.py scores), pooling, encoder, per-label thresholds, the
                   checkpoint's step and validation metrics, the model files, parity figures,
                   runtime_checks: each runtime's mean AUC against fp32 on the validation rows, and
                   the decisions (decisions.py): base_rates, calibration, policies (f1, the default;
                   precision and recall, at --target_precision / --target_recall, with each label's
                   validation precision and recall, and null where a target is not reached) and
                   validation_at_base_rates (F1, Brier and ECE per label on those rows).
Decisions: the checkpoint's validation logits are reweighted to --base_rates (default: the checkpoint's
config, Kaggle's full-set rates unless set), a per-label Platt map sigmoid(a * logit + b) is fitted there
and put inside the graph, so every score is a calibrated probability at those rates, and the thresholds
are tuned on that scale. Checkpoints without validation logits (a last.pt, or older) export uncalibrated.
Parity: onnxruntime and PyTorch score the padded batch of varied-length comments the graph was
traced on, and a second one of another batch size and length (the short comments alone); the export
fails (exit 2, nothing published) when the fp32 max abs difference on either exceeds 1e-4. A
checkpoint with no validation metrics, or a last.pt with training state, is exported with a warning.
Runtime checks: every runtime predict.py can pick here (onnxruntime fp32 and int8, OpenVINO where
installed) scores the first --check_rows rows of the checkpoint's own validation split (its
data_path, read relative to the current folder, as train.py read it) through predict.py; one that
loses more than runtimes.MAX_AUC_DROP mean AUC against fp32, or fails, is recorded so and never picked. About
20-45 s a runtime for MiniLM's 2,000 rows on 2 cores; bert-base takes several times that.
"""
import argparse
import json
import logging
import os
import shutil
import sys
import warnings

from checkpoint import atomic_write, publish_dir
from data import LABELS
from errors import UsageError, exit_on_error
from predict import FORMAT_VERSION, encode_texts, make_windows, window_batch

ROOT = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {False: "configs/base.json", True: "configs/average.json"}
PARITY_TOL = 1e-4
# Validation rows each runtime is checked on: 2,000 take MiniLM about 20-45 s a runtime on 2 cores; 0: all
CHECK_ROWS = 2000
OPSET = 17  # the first opset with LayerNormalization as one op
# sdpa (the transformers default) traces correctly with a padding mask: the exported graph matches
# PyTorch on other batch sizes, lengths and paddings than the trace's (every export checks a second
# batch, and eager attention was checked too). Set "eager" here if a future transformers breaks that.
ATTN_IMPLEMENTATION = "sdpa"
# Varied lengths and scripts; the joined ones make long rows (several windows), so the batch pads.
PARITY_TEXTS = ["", "you are an idiot", "Thanks for fixing the citation, it reads much better now.",
                "I will find where you live 🙂🙂", "Привет, мир! 世界你好 مرحبا",
                "STOP VANDALISING THIS PAGE!!!", 'Too long; maybe split it into "History" and "Today"?']
N_SHORT = len(PARITY_TEXTS)  # the second parity batch: these alone, fewer and shorter rows than the trace's
PARITY_TEXTS += [" ".join(PARITY_TEXTS * k) for k in (2, 5, 20)]


class ExportError(UsageError):
    """A problem with the checkpoint, the tokenizer or the output folder: one line, names the path."""


# ----------------------------------------------------------------------------
# inputs and outputs

def default_checkpoint(avg):
    """runs/<out_dir of configs/base.json or configs/average.json>/best.pt, relative to the current
    directory as train.py writes it; the config is read from this project."""
    cfg_path = os.path.join(ROOT, CONFIGS[avg])
    try:
        out_dir = json.load(open(cfg_path))["out_dir"]
    except (OSError, ValueError, KeyError) as e:
        raise ExportError(f"{CONFIGS[avg]}: cannot read out_dir ({type(e).__name__}: {e})") from None
    return os.path.join(out_dir, "best.pt"), CONFIGS[avg]


def check_out_dir(out):
    """Only an earlier export (or an empty folder) may be replaced: never delete a stranger's files."""
    replaceable = os.path.isdir(out) and (not os.listdir(out) or os.path.isfile(os.path.join(out, "export.json")))
    if os.path.exists(out) and not replaceable:
        raise ExportError(f"{out}: exists and is not an export folder; pick another --out")


def save_tokenizer(encoder_name, path):
    """tokenizer.json with padding and truncation off -> (prefix_ids, suffix_ids, pad_id)."""
    from transformers import AutoTokenizer

    from checkpoint import resolve_encoder
    try:
        tok = AutoTokenizer.from_pretrained(resolve_encoder(encoder_name)).backend_tokenizer
    except Exception as e:  # not cached and no network, or not a tokenizer folder
        raise ExportError(f"cannot load the tokenizer of {encoder_name!r} "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    tok.no_padding()
    tok.no_truncation()
    tok.save(path)
    # The special tokens around one sequence ([CLS] ... [SEP] for BERT), found rather than assumed.
    plain, full = tok.encode("a", add_special_tokens=False).ids, tok.encode("a").ids
    at = next(i for i in range(len(full)) if full[i:i + len(plain)] == plain)
    return full[:at], full[at + len(plain):], tok.token_to_id("[PAD]") or 0  # pad id as train.py


# ----------------------------------------------------------------------------
# export and checks

def make_wrapper(model, calibration=None):
    """The classifier with the calibration map and the sigmoid inside, so the graph outputs calibrated
    probabilities (every runtime, and any client of model.onnx, gets the same); None: the plain sigmoid."""
    import torch

    a = [calibration["a"][n] for n in LABELS] if calibration else [1.0] * len(LABELS)
    b = [calibration["b"][n] for n in LABELS] if calibration else [0.0] * len(LABELS)

    class Probs(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m
            self.register_buffer("a", torch.tensor(a, dtype=torch.float32))
            self.register_buffer("b", torch.tensor(b, dtype=torch.float32))

        def forward(self, input_ids, attention_mask):
            z = self.m(input_ids, attention_mask)  # (B,T) -> (B,6) logits
            return torch.sigmoid(z * self.a + self.b)  # (B,6) * (6,) + (6,) -> (B,6) calibrated probabilities

    return Probs(model).eval()


def fit_decisions(ckpt, ckpt_path, base_rates, target_precision, target_recall):
    """decisions.fit on the checkpoint's validation logits -> its dict (base_rates, calibration, policies)
    plus "validation" (F1, Brier and ECE per label at those rates, on the same rows), or None where the
    checkpoint holds no validation logits (written before 2026-12-02, or a last.pt)."""
    import decisions
    rates = decisions.parse_rates(base_rates or ckpt["config"].get("base_rates", "kaggle"), "--base_rates")
    if "validation" not in ckpt:
        print(f"warning: {ckpt_path}: no validation logits (a last.pt, or trained before calibration): the "
              f"scores are not calibrated and the export has no policies", file=sys.stderr)
        return None
    logits, labels = ckpt["validation"]["logits"].double().numpy(), ckpt["validation"]["labels"].numpy()
    fitted = decisions.fit(logits, labels, rates, target_precision, target_recall)
    s = decisions.summary(decisions.apply_calibration(logits, fitted["calibration"]), labels,
                          decisions.rate_weights(labels, rates),
                          [fitted["policies"]["f1"]["thresholds"][n] for n in LABELS])
    fitted["validation"] = {"rows": len(labels), "macro_f1": s["macro_f1"], "micro_f1": s["micro_f1"],
                            **{k: dict(zip(LABELS, map(float, s[k]))) for k in ("f1", "brier", "ece")}}
    for name, policy in fitted["policies"].items():
        for label, why in policy.get("unreached", {}).items():
            print(f"policy {name}: no threshold for {label} ({why}); predict.py --policy {name} "
                  f"needs --thresholds {label}=X")  # a fact of the data, recorded in export.json: not a warning
    return fitted


def onnx_probs(path, ids, mask):
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(["probs"], {"input_ids": ids, "attention_mask": mask})[0]


def parity_batches(tok, serve_length, prefix, suffix, pad_id):
    """Two padded batches of PARITY_TEXTS' windows -> [(ids, mask)], (B,T) int64: every window (traced
    on), then the short texts' windows alone, in reverse order: fewer rows, shorter, the longest unpadded."""
    import numpy as np
    seqs = encode_texts(tok, PARITY_TEXTS)
    windows = make_windows(seqs, serve_length - len(prefix) - len(suffix))
    short = np.flatnonzero(windows[0] < N_SHORT)[::-1]
    return [window_batch(seqs, windows, idx, prefix, suffix, pad_id) for idx in (np.arange(len(windows[0])), short)]


def check_parity(wrapper, path, batches, ckpt_path, out):
    """fp32 onnxruntime against PyTorch on every batch -> (onnxruntime's probs on the first, max abs diff)."""
    import numpy as np
    import torch
    got, diffs = [], []
    for ids, mask in batches:
        with torch.no_grad():
            ref = wrapper(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()  # (B,6)
        got.append(onnx_probs(path, ids, mask))
        diffs.append(np.abs(got[-1] - ref).max())
    diff = float(np.max(diffs))  # numpy's max keeps a nan, which the check below refuses
    shapes = " and ".join(f"{ids.shape[0]}x{ids.shape[1]}" for ids, _ in batches)
    print(f"fp32 parity: max abs diff {diff:.2e} (onnxruntime vs PyTorch on batches of {shapes} windows x tokens, "
          f"tolerance {PARITY_TOL:g})")
    if not diff <= PARITY_TOL:  # also catches nan
        raise ExportError(f"{ckpt_path}: ONNX and PyTorch disagree by {diff:.2e} > {PARITY_TOL:g}; "
                          f"nothing written to {out} (try ATTN_IMPLEMENTATION = 'eager' in export.py)")
    return got[0], diff


def checkpoint_warnings(ckpt, path):
    """What export.json will say about this checkpoint that its user may not expect -> one line each."""
    out = []
    if not ckpt["metrics"]:
        out.append(f"warning: {path}: no validation metrics (written before any evaluation); "
                   f"the thresholds are the 0.5 defaults")
    elif "thresholds" not in ckpt:
        out.append(f"warning: {path}: no tuned thresholds; using 0.5 for every label")
    if "optimizer" in ckpt:  # last.pt: weights of its last step, metrics of its last evaluation
        out.append(f"warning: {path}: a last.pt with training state: its metrics and thresholds come from "
                   f"its last evaluation, which may be older than its weights (best.pt holds validated ones)")
    return out


def quantize_int8(src, dst):
    """Dynamic quantization: int8 weights, activations quantized at run time, embeddings too (4x smaller).

    reduce_range (7-bit weights): CPUs without VNNI (AVX2, like ours) multiply u8 x s8 pairs into
    saturating int16 sums, which full-range weights overflow; per_channel scales win the lost bit
    back. Measured against fp32 on 200 sample comments (MiniLM, AVX2): mean |logit error| 0.0095
    with both, 0.016 per channel only, 0.021 per tensor (the default); the same speed.

    The file written is the graph onnxruntime builds from that at load time (int8 MatMuls fused
    with their quantize steps, LayerNorm, GELU), so predict.py's session does not re-derive it on
    every start: about 0.1 s less CPU per cold start, the same scores and speed. Level EXTENDED,
    not ALL: the levels above it may bake this CPU's memory layouts into the file."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    raw = f"{dst}.raw"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice fails on BERT graphs (symbolic shapes)
    try:
        quantize_dynamic(src, raw, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = dst
        ort.InferenceSession(raw, opts, providers=["CPUExecutionProvider"])
    finally:
        root.setLevel(level)
        if os.path.exists(raw):
            os.remove(raw)


def add_int8(fp32, int8, ids, mask, fp32_probs, thresholds, ckpt_path):
    """Quantize fp32 into int8 and compare the two on the parity batch -> its parity figures."""
    import numpy as np
    quantize_int8(fp32, int8)
    q = onnx_probs(int8, ids, mask)
    if not np.isfinite(q).all():
        raise ExportError(f"{ckpt_path}: the int8 model gives non-finite probabilities; nothing written")
    th = np.asarray(thresholds)
    agree = float(((q >= th) == (fp32_probs >= th)).mean())
    qdiff = float(np.abs(q - fp32_probs).max())
    s32, s8 = os.path.getsize(fp32), os.path.getsize(int8)
    print(f"int8: {s8 / 1e6:.1f} MB vs fp32 {s32 / 1e6:.1f} MB ({s8 / s32:.0%}); vs fp32 on the parity "
          f"batch: max abs diff {qdiff:.4f}, decisions at the thresholds agree {agree:.1%} "
          f"({ids.shape[0]} windows x {len(LABELS)} labels)")
    return {"int8_max_abs_diff": qdiff, "int8_decision_agreement": agree}


def add_runtime_checks(folder, meta, cfg, thresholds, check_rows):
    """check_runtimes on the checkpoint's validation rows, into folder's export.json (int8 stops being the
    default where it fails). Nothing to check where fp32 is the only runtime here."""
    from runtimes import installed
    if len(meta["models"]) == 1 and not installed("openvino"):
        return
    from runtimes import check_runtimes, validation_rows
    rows = validation_rows(cfg, check_rows)
    if rows is None:
        print(f"warning: {cfg['data_path']} (the checkpoint's data) is not here, relative to this folder: "
              f"the runtimes are not checked on validation rows", file=sys.stderr)
        return
    meta["runtime_checks"] = check_runtimes(folder, rows, thresholds)
    if not meta["runtime_checks"].get("onnxruntime-int8", {}).get("ok", True):
        meta["default_model"] = "fp32"
    write_meta(folder, meta)


def export(ckpt_path, out, quantize=None, check_rows=CHECK_ROWS, base_rates=None, target_precision=0.9,
           target_recall=0.9):
    """Export, check parity and every runtime on the validation rows, publish to out -> the export.json dict.
    base_rates (a string as config's base_rates; None: the checkpoint's) and the targets set the decisions."""
    import onnx
    import torch

    from checkpoint import load_checkpoint, model_from_checkpoint
    ckpt = load_checkpoint(ckpt_path)
    for key in ("config", "step", "metrics"):
        if key not in ckpt:
            raise ExportError(f"{ckpt_path}: checkpoint has no {key!r}; not written by this train.py")
    cfg = ckpt["config"]
    # the windows predict.py scores: as long as validation saw, where the thresholds were tuned
    serve_length = cfg.get("eval_max_length") or cfg["max_length"]
    thresholds = ckpt.get("thresholds") or [0.5] * len(LABELS)
    for line in checkpoint_warnings(ckpt, ckpt_path):
        print(line, file=sys.stderr)
    fitted = fit_decisions(ckpt, ckpt_path, base_rates, target_precision, target_recall)
    if fitted:  # thresholds on the calibrated scale, tuned at the deployment's rates
        thresholds = [fitted["policies"]["f1"]["thresholds"][n] for n in LABELS]
    model = model_from_checkpoint(ckpt)
    model.encoder.set_attn_implementation(ATTN_IMPLEMENTATION)
    wrapper = make_wrapper(model, fitted and fitted["calibration"])

    check_out_dir(out)
    parent, name = os.path.split(os.path.abspath(out))
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")  # hidden: predict.py never picks it as newest
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        prefix, suffix, pad_id = save_tokenizer(cfg["encoder"], os.path.join(tmp, "tokenizer.json"))
        from tokenizers import Tokenizer
        batches = parity_batches(Tokenizer.from_file(os.path.join(tmp, "tokenizer.json")), serve_length,
                                 prefix, suffix, pad_id)
        ids, mask = batches[0]  # traced on
        print(f"parity batch: {ids.shape[0]} windows of {mask.sum(1).min()}..{ids.shape[1]} tokens")

        fp32 = os.path.join(tmp, "model.onnx")
        with warnings.catch_warnings():
            # TracerWarnings on transformers' mask code test shapes that hold for every input (the mask
            # is as long as the sequence and never None); the deprecation one is about dynamo=False,
            # which we want (one self-contained file). Parity below is the real check.
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (torch.from_numpy(ids), torch.from_numpy(mask)), fp32,
                              input_names=["input_ids", "attention_mask"], output_names=["probs"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                            "attention_mask": {0: "batch", 1: "sequence"}, "probs": {0: "batch"}},
                              opset_version=OPSET, dynamo=False)
        onnx.checker.check_model(fp32)
        got, diff = check_parity(wrapper, fp32, batches, ckpt_path, out)
        models = {"fp32": "model.onnx"}
        parity = {"fp32_max_abs_diff": diff, "windows": int(ids.shape[0]),
                  "batches": [list(map(int, b.shape)) for b, _ in batches]}

        if quantize == "int8":
            models["int8"] = "model.int8.onnx"
            parity.update(add_int8(fp32, os.path.join(tmp, models["int8"]), ids, mask, got, thresholds, ckpt_path))

        import onnxruntime
        import transformers
        meta = {"format_version": FORMAT_VERSION, "labels": list(LABELS), "max_length": int(serve_length),
                "pooling": ckpt["model_config"]["pooling"], "encoder": cfg["encoder"],
                "thresholds": {name: float(t) for name, t in zip(LABELS, thresholds)},
                "models": models, "default_model": "int8" if "int8" in models else "fp32",
                "tokenizer": "tokenizer.json", "prefix_ids": prefix, "suffix_ids": suffix, "pad_id": pad_id,
                "checkpoint": {"path": os.path.abspath(ckpt_path), "step": int(ckpt["step"]),
                               "validation_metrics": {k: None if v != v else v for k, v in ckpt["metrics"].items()}},
                "parity": parity, "opset": OPSET, "attn_implementation": ATTN_IMPLEMENTATION,
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                             "onnxruntime": onnxruntime.__version__}}
        if fitted:
            meta.update(default_policy="f1", policies=fitted["policies"], base_rates=fitted["base_rates"],
                        calibration={**fitted["calibration"], "applied": "in the graph: probs = sigmoid(a * logit + b)"},
                        validation_at_base_rates=fitted["validation"])
        write_meta(tmp, meta)
        add_runtime_checks(tmp, meta, cfg, thresholds, check_rows)
        __import__("model_card").write_model_card(tmp, meta, cfg)  # MODEL_CARD.md from export.json
        publish_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out}/: {', '.join(sorted(os.listdir(out)))}")
    return meta


def write_meta(folder, meta):
    text = json.dumps(meta, indent=1, allow_nan=False)  # strict JSON: an undefined AUC (nan) is null
    atomic_write(os.path.join(folder, "export.json"), lambda f: f.write(text), mode="w")


# ----------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description="Export a checkpoint to ONNX (see the docstring).")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--avg", action="store_true", help="export runs/average/best.pt (configs/average.json)")
    src.add_argument("--checkpoint", help="any checkpoint written by train.py")
    p.add_argument("--out", help="output folder (default: exports/<run folder name>)")
    p.add_argument("--quantize", choices=["int8"], help="also write a dynamically quantized int8 model")
    p.add_argument("--check_rows", type=int, default=CHECK_ROWS, help="validation rows each runtime is checked "
                                                                       f"on (default {CHECK_ROWS}; 0: all of them)")
    p.add_argument("--base_rates", help="label rates of the community the decisions are for: kaggle, none or "
                                        "toxic=0.2,threat=0.01,... (default: the checkpoint's base_rates)")
    p.add_argument("--target_precision", type=float, default=0.9, help="the precision policy's target (0.9)")
    p.add_argument("--target_recall", type=float, default=0.9, help="the recall policy's target (0.9)")
    args = p.parse_args(argv)
    with exit_on_error():
        import decisions
        if args.base_rates is not None:
            decisions.parse_rates(args.base_rates, "--base_rates")
        decisions.check_target(args.target_precision, "--target_precision")
        decisions.check_target(args.target_recall, "--target_recall")
        ckpt, hint = (args.checkpoint, None) if args.checkpoint else default_checkpoint(args.avg)
        if not os.path.isfile(ckpt):  # before importing torch: a typo fails in a blink
            more = f" (train it with: python train.py {hint})" if hint else ""
            raise ExportError(f"{ckpt}: no such checkpoint{more}")
        out = args.out or os.path.join("exports", os.path.basename(os.path.dirname(os.path.abspath(ckpt))))
        check_out_dir(out)
        if args.check_rows < 0:
            raise ExportError(f"--check_rows must be >= 0, got {args.check_rows}")
        export(ckpt, out, args.quantize, args.check_rows, args.base_rates, args.target_precision, args.target_recall)


if __name__ == "__main__":
    main()
