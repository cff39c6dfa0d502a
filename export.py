"""Export a trained checkpoint to ONNX for CPU serving with predict.py (no torch needed there).

    python export.py                                   # runs/base/best.pt (configs/base.json) -> exports/base/
    python export.py --avg                             # runs/average/best.pt (configs/average.json, mean pooling)
    python export.py --checkpoint runs/mini/best.pt    # any checkpoint -> exports/mini/
    python export.py --checkpoint runs/mini/best.pt --out exports/mini --quantize int8
    python export.py --checkpoint runs/mini/best.pt --base_rates toxic=0.02,threat=0.001   # your community

Writes into the output folder (replaced as a whole, and only once every check has passed):
  model.onnx       fp32, one self-contained file (no .onnx.data); inputs input_ids, attention_mask
                   (int64, dynamic batch and sequence axes), output probs (B, L), calibrated, sigmoid inside.
  model.int8.onnx  with --quantize int8: dynamic quantization (int8 weights per channel, 7-bit range
                   for CPUs without VNNI; see quantize_int8), about 1/4 the size, saved already
                   optimized for onnxruntime (its fused com.microsoft ops: onnxruntime only, while
                   model.onnx is plain ONNX); predict.py runs it where it is the fastest (runtimes.py).
  tokenizer.json   the encoder's tokenizer, padding and truncation off (predict.py makes windows).
  export.json      format_version (2), labels (the checkpoint's), max_length (the config's
                   eval_max_length if set: the window predict.py scores), pooling, encoder, the
                   checkpoint's step and validation metrics, the model files, parity figures,
                   runtime_checks: each runtime's mean AUC against fp32 on the validation rows, and
                   the decisions (decisions.py): base_rates, calibration, policies (f1, the default_policy:
                   the thresholds predict.py, classifier.py and serve.py decide at unless told otherwise;
                   precision and recall, at --target_precision / --target_recall, with each label's
                   validation precision and recall, and null where a target is not reached) and
                   validation_at_base_rates (F1, Brier and ECE per label on those rows).
Decisions: the checkpoint's validation logits are reweighted to --base_rates (default: the checkpoint's
config, Kaggle's full-set rates unless set), a per-label Platt map sigmoid(a * logit + b) is fitted there
and put inside the graph, so every score is a calibrated probability at those rates, and the thresholds
are tuned on that scale. A checkpoint without validation logits (a last.pt) is refused: export its best.pt.
Parity: onnxruntime and PyTorch score the padded batch of varied-length comments the graph was
traced on, and a second one of another batch size and length (the short comments alone); the export
fails (exit 2, nothing published) when the fp32 max abs difference on either exceeds 1e-4.
Runtime checks: every runtime predict.py can pick here (onnxruntime fp32 and int8, OpenVINO where
installed) scores the first --check_rows rows of the checkpoint's own validation split (its
data_path, read relative to the current folder, as train.py read it) through scoring.py; one that
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

import torch

from checkpoint import load_checkpoint, model_from_checkpoint, resolve_encoder
from checks import ExportError, check_parity, check_runtimes, compare_int8, parity_batches, validation_rows
from classifier import resolve_thresholds
from common import FAIRNESS, atomic_write, exit_on_error, publish_dir
from decisions import check_target, fit, parse_rates
from fairness import bias_figures, read_bias_rows, read_terms
from model_card import write_model_card
from runtimes import installed
from scoring import FORMAT_VERSION, load_model, score_texts

ROOT = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {False: "configs/base.json", True: "configs/average.json"}
# Validation rows each runtime is checked on: 2,000 take MiniLM about 20-45 s a runtime on 2 cores; 0: all
CHECK_ROWS = 2000
OPSET = 17  # the first opset with LayerNormalization as one op
# sdpa (the transformers default) traces correctly with a padding mask: the exported graph matches
# PyTorch on other batch sizes, lengths and paddings than the trace's (every export checks a second
# batch, and eager attention was checked too). Set "eager" here if a future transformers breaks that.
ATTN_IMPLEMENTATION = "sdpa"


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
    from transformers import AutoTokenizer  # heavy: imported where it is used
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
# the decisions, the graph, the int8 model


def fit_decisions(ckpt, ckpt_path, base_rates, target_precision, target_recall):
    """decisions.fit on the checkpoint's validation logits at base_rates (None: the checkpoint's config's) -> its
    dict: base_rates, calibration, policies, and "validation" (F1, Brier and ECE per label at those rates)."""
    names = ckpt["model_config"]["labels"]
    rates = parse_rates(base_rates or ckpt["config"]["base_rates"], "--base_rates", names)
    if "validation" not in ckpt:
        raise ExportError(f"{ckpt_path}: no validation logits to fit the decisions on (a last.pt holds none): "
                          f"export the run's best.pt")
    logits, labels = ckpt["validation"]["logits"].double().numpy(), ckpt["validation"]["labels"].numpy()
    fitted = fit(logits, labels, names, rates, target_precision, target_recall)
    for name, policy in fitted["policies"].items():
        for label, why in policy.get("unreached", {}).items():
            print(f"policy {name}: no threshold for {label} ({why}); predict.py --policy {name} "
                  f"needs --thresholds {label}=X")  # a fact of the data, recorded in export.json: not a warning
    return fitted


def make_wrapper(model, calibration, names):
    """The classifier with the calibration map and the sigmoid inside, so the graph outputs calibrated
    probabilities (every runtime, and any client of model.onnx, gets the same)."""
    a, b = ([calibration[k][n] for n in names] for k in ("a", "b"))

    class Probs(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m
            self.register_buffer("a", torch.tensor(a, dtype=torch.float32))
            self.register_buffer("b", torch.tensor(b, dtype=torch.float32))

        def forward(self, input_ids, attention_mask):
            z = self.m(input_ids, attention_mask)  # (B,T) -> (B,L) logits
            return torch.sigmoid(z * self.a + self.b)  # (B,L) * (L,) + (L,) -> (B,L) calibrated probabilities

    return Probs(model).eval()


def write_onnx(wrapper, ids, mask, path):
    """The fp32 graph, traced on one batch, with dynamic batch and sequence axes, checked by onnx."""
    import onnx  # heavy: imported where it is used
    with warnings.catch_warnings():
        # TracerWarnings on transformers' mask code test shapes that hold for every input (the mask
        # is as long as the sequence and never None); the deprecation one is about dynamo=False,
        # which we want (one self-contained file). Parity is the real check.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (torch.from_numpy(ids), torch.from_numpy(mask)), path,
                          input_names=["input_ids", "attention_mask"], output_names=["probs"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "attention_mask": {0: "batch", 1: "sequence"}, "probs": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    onnx.checker.check_model(path)


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




# ----------------------------------------------------------------------------
# export


def export(ckpt_path, out, quantize=None, check_rows=CHECK_ROWS, base_rates=None, target_precision=0.9,
           target_recall=0.9):
    """Export, check parity and every runtime on the validation rows, publish to out -> the export.json dict.
    base_rates (a string as config's base_rates; None: the checkpoint's) and the targets set the decisions."""
    ckpt = load_checkpoint(ckpt_path)
    cfg, names = ckpt["config"], ckpt["model_config"]["labels"]
    fitted = fit_decisions(ckpt, ckpt_path, base_rates, target_precision, target_recall)
    thresholds = [fitted["policies"]["f1"]["thresholds"][n] for n in names]  # the default policy's
    model = model_from_checkpoint(ckpt)
    model.encoder.set_attn_implementation(ATTN_IMPLEMENTATION)
    wrapper = make_wrapper(model, fitted["calibration"], names)
    serve_length = cfg["eval_max_length"] or cfg["max_length"]  # the windows: as long as validation saw

    check_out_dir(out)
    parent, name = os.path.split(os.path.abspath(out))
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")  # hidden: predict.py never picks it as newest
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        tokens = save_tokenizer(cfg["encoder"], os.path.join(tmp, "tokenizer.json"))
        from tokenizers import Tokenizer  # heavy: imported where it is used
        batches = parity_batches(Tokenizer.from_file(os.path.join(tmp, "tokenizer.json")), serve_length, *tokens)
        ids, mask = batches[0]  # traced on
        print(f"parity batch: {ids.shape[0]} windows of {mask.sum(1).min()}..{ids.shape[1]} tokens")
        models = {"fp32": "model.onnx"}
        write_onnx(wrapper, ids, mask, os.path.join(tmp, models["fp32"]))
        got, diff = check_parity(wrapper, os.path.join(tmp, models["fp32"]), batches, ckpt_path, out)
        parity = {"fp32_max_abs_diff": diff, "windows": int(ids.shape[0]),
                  "batches": [list(map(int, b.shape)) for b, _ in batches]}
        if quantize == "int8":
            models["int8"] = "model.int8.onnx"
            fp32_path, int8_path = (os.path.join(tmp, models[k]) for k in ("fp32", "int8"))
            quantize_int8(fp32_path, int8_path)
            parity.update(compare_int8(fp32_path, int8_path, ids, mask, got, thresholds, ckpt_path))
        meta = export_meta(ckpt, ckpt_path, serve_length, models, tokens, parity, fitted)
        write_meta(tmp, meta)
        if len(models) > 1 or installed("openvino"):  # something to check against fp32
            add_runtime_checks(tmp, meta, cfg, names, thresholds, check_rows)
        add_fairness(tmp, meta)
        write_model_card(tmp, meta, cfg)
        publish_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out}/: {', '.join(sorted(os.listdir(out)))}")
    return meta


def export_meta(ckpt, ckpt_path, serve_length, models, tokens, parity, fitted):
    """export.json's dict (format_version 2): what scoring.py reads, and what the export was checked against."""
    import onnxruntime
    import transformers
    prefix, suffix, pad_id = tokens
    return {"format_version": FORMAT_VERSION, "labels": list(ckpt["model_config"]["labels"]),
            "max_length": int(serve_length), "pooling": ckpt["model_config"]["pooling"],
            "encoder": ckpt["config"]["encoder"], "models": models, "tokenizer": "tokenizer.json",
            "prefix_ids": prefix, "suffix_ids": suffix, "pad_id": pad_id,
            "checkpoint": {"path": os.path.abspath(ckpt_path), "step": int(ckpt["step"]),
                           "validation_metrics": {k: None if v != v else v for k, v in ckpt["metrics"].items()}},
            "parity": parity, "opset": OPSET, "attn_implementation": ATTN_IMPLEMENTATION,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "onnxruntime": onnxruntime.__version__},
            "default_policy": "f1", "policies": fitted["policies"], "base_rates": fitted["base_rates"],
            "calibration": {**fitted["calibration"], "applied": "in the graph: probs = sigmoid(a * logit + b)"},
            "validation_at_base_rates": fitted["validation"]}


def add_runtime_checks(folder, meta, cfg, names, thresholds, check_rows):
    """check_runtimes on the checkpoint's validation rows, into folder's export.json."""
    rows = validation_rows(cfg, names, check_rows)
    if rows is None:
        print(f"warning: {cfg['data_path']} (the checkpoint's data) is not here, relative to this folder: "
              f"the runtimes are not checked on validation rows", file=sys.stderr)
        return
    meta["runtime_checks"] = check_runtimes(folder, rows, thresholds)
    write_meta(folder, meta)


def add_fairness(folder, meta):
    """The project's identity set (data/fairness/identity_eval.csv, never trained on) scored through the new
    export's fp32 model at its served thresholds: the bias figures export.json and MODEL_CARD.md state. An
    export without a toxic label has no such figures."""
    if "toxic" not in meta["labels"]:
        return
    path = os.path.join(FAIRNESS, "identity_eval.csv")
    texts, toxic, groups = read_bias_rows(path, "toxic", read_terms(os.path.join(FAIRNESS, "eval_terms.txt")))
    probs = score_texts(load_model(folder, "onnxruntime-fp32"), texts, progress=False)
    f = bias_figures(probs, meta["labels"], resolve_thresholds(meta), "toxic", toxic, groups)
    def known(v):  # strict JSON: an undefined AUC (an identity with rows on one side only) is null
        return None if isinstance(v, float) and v != v else v
    worst = [{k: known(r[k]) for k in ("identity", "subgroup_auc", "bpsn_auc", "bnsp_auc", "fpr")}
             for r in f["identities"][:10]]
    meta["fairness"] = {"set": os.path.relpath(path, ROOT), **{k: known(v) for k, v in f["summary"].items()},
                        "toxic_recall": known(f["toxic_recall"]), "worst": worst}
    print(f"fairness: BPSN power mean {f['summary']['bpsn_power_mean']:.4f}, harmless identity rows flagged up to "
          f"{f['summary']['max_fpr']:.1%} per identity ({f['background_fpr']:.1%} without one)")
    write_meta(folder, meta)


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
        check_target(args.target_precision, "--target_precision")
        check_target(args.target_recall, "--target_recall")
        ckpt, hint = (args.checkpoint, None) if args.checkpoint else default_checkpoint(args.avg)
        if not os.path.isfile(ckpt):
            more = f" (train it with: python train.py {hint})" if hint else ""
            raise ExportError(f"{ckpt}: no such checkpoint{more}")
        out = args.out or os.path.join("exports", os.path.basename(os.path.dirname(os.path.abspath(ckpt))))
        check_out_dir(out)
        if args.check_rows < 0:
            raise ExportError(f"--check_rows must be >= 0, got {args.check_rows}")
        export(ckpt, out, args.quantize, args.check_rows, args.base_rates, args.target_precision, args.target_recall)


if __name__ == "__main__":
    main()
