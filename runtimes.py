"""The inference runtimes predict.py can run an export on, and the rule that picks the fastest for this CPU.

    from runtimes import choose, open_session
    runtime, why = choose(meta, cpu_flags())          # e.g. ("openvino", "this CPU has avx512_bf16 ...")
    session, path = open_session(runtime, model_dir, meta, threads)  # session.run(["probs"], {"input_ids": .., "attention_mask": ..})

    openvino          OpenVINO on model.onnx; bf16 on CPUs with bf16 matrix units (AVX512_BF16, AMX), else fp32
    onnxruntime-int8  onnxruntime on model.int8.onnx (dynamic int8: export.py --quantize int8)
    onnxruntime-fp32  onnxruntime on model.onnx
The rule follows bench/README.md's prediction tables: where the CPU multiplies bf16 natively, OpenVINO in bf16
is the fastest; elsewhere onnxruntime int8 is (AVX2: 1.55x PyTorch fp32), then onnxruntime fp32. No torch here.
checks.check_runtimes (export.py runs it) scores every runtime on the checkpoint's validation rows; one that loses
more than MAX_AUC_DROP mean AUC against fp32 is recorded so in export.json, and choose() never picks it.
"""
import importlib.util
import os

RUNTIMES = ("openvino", "onnxruntime-int8", "onnxruntime-fp32")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 matrix multiplication
MAX_AUC_DROP = 0.002  # mean AUC a runtime may lose against fp32 on the validation rows and still be picked


class RuntimeChoiceError(Exception):
    """A runtime that cannot run here: predict.py turns it into one line and exit 2."""


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags (empty where there is no cpuinfo: not Linux)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def installed(module):
    return importlib.util.find_spec(module) is not None


def choose(meta, flags, have_openvino=None, small_job=False):
    """-> (runtime, the reason in words) for this export on a CPU with these flags. A runtime export.py
    found to lose more than 0.002 mean AUC on the validation rows (its runtime_checks) is never picked.
    small_job (a few comments in all): OpenVINO's start-up (import and compile, about 1 s) would cost more
    than its speed saves, so onnxruntime int8 takes it where it can."""
    have_openvino = installed("openvino") if have_openvino is None else have_openvino
    # OpenVINO's check counts where it ran in bf16, as it runs here: one made in f32 (an export on a CPU
    # without bf16) says nothing of bf16's scores
    failed = [r for r, c in meta.get("runtime_checks", {}).items()
              if c.get("ok") is False and (r != "openvino" or c.get("precision") in ("bf16", None))]
    bf16 = [f for f in BF16_FLAGS if f in flags]
    int8 = "int8" in meta["models"] and "onnxruntime-int8" not in failed
    if small_job and int8:
        return "onnxruntime-int8", "a few comments: onnxruntime int8 starts in a fraction of OpenVINO's start-up"
    if bf16 and have_openvino and "openvino" not in failed:
        return "openvino", f"this CPU multiplies bf16 natively ({bf16[0]}): OpenVINO runs model.onnx in bf16"
    if int8:
        why = ("no native bf16 on this CPU" if not bf16 else "OpenVINO failed its check in export.json"
               if "openvino" in failed else "OpenVINO is not installed (pip install openvino)")
        return "onnxruntime-int8", f"{why}: onnxruntime on the int8 model"
    why = ("the int8 model lost more than 0.002 mean AUC in export.py's check" if "int8" in meta["models"]
           else "the export has no int8 model (export.py --quantize int8)")
    return "onnxruntime-fp32", f"{why}: onnxruntime on fp32"


def check(runtime, meta, model_dir):
    """A forced runtime this export or machine cannot run: RuntimeChoiceError naming what to do."""
    if runtime not in RUNTIMES:
        raise RuntimeChoiceError(f"--runtime {runtime!r}: choose one of auto, {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime-int8" and "int8" not in meta["models"]:
        raise RuntimeChoiceError(f"--runtime onnxruntime-int8: {model_dir} has no int8 model; export it with "
                                 f"python export.py --checkpoint CKPT --quantize int8")
    if runtime == "openvino" and not installed("openvino"):
        raise RuntimeChoiceError("--runtime openvino: OpenVINO is not installed here; pip install openvino==2026.4.1")


def physical_cores():
    """Distinct cores among the CPUs we may run on (hyperthreads share one core's matmul units),
    capped by a container's CPU quota: more threads than that only wait for each other."""
    try:
        topo = "/sys/devices/system/cpu/cpu{}/topology/{}"
        n = len({(open(topo.format(c, "physical_package_id")).read(), open(topo.format(c, "core_id")).read())
                 for c in os.sched_getaffinity(0)})
    except (OSError, AttributeError):  # not Linux
        return os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        return max(1, min(n, -(-int(quota) // int(period)))) if quota != "max" else n
    except (OSError, ValueError):  # cgroup v1 or none
        return n


class OpenVINOSession:
    """OpenVINO behind onnxruntime's run(names, feeds) -> [arrays], so predict.py scores through one call."""

    def __init__(self, path, threads):
        import openvino as ov
        core = ov.Core()
        bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        self.precision = "bf16" if bf16 else "f32"
        compiled = core.compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                                    "INFERENCE_PRECISION_HINT": self.precision})
        self.request = compiled.create_infer_request()

    def run(self, names, feeds):
        result = self.request.infer(feeds)
        return [result[name].copy() for name in names]  # copies: the request reuses its output buffers


def open_session(runtime, model_dir, meta, threads):
    """A loaded model for runtime: its session.run(["probs"], feeds) gives probabilities (B, L)."""
    path = os.path.join(model_dir, meta["models"]["int8" if runtime == "onnxruntime-int8" else "fp32"])
    if runtime == "openvino":
        return OpenVINOSession(path, threads), path
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1  # one branch at a time: BERT's graph is a chain
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"]), path
