"""runtimes.py: the rule that picks predict.py's runtime for a CPU, and the errors of a forced one."""
import pytest

import runtimes

INT8 = {"models": {"fp32": "model.onnx", "int8": "model.int8.onnx"}}
FP32 = {"models": {"fp32": "model.onnx"}}


@pytest.mark.parametrize("meta, flags, openvino, expected", [
    (INT8, {"avx2", "avx512_bf16"}, True, "openvino"),        # native bf16: OpenVINO in bf16
    (INT8, {"avx2", "amx_bf16", "amx_int8"}, True, "openvino"),
    (FP32, {"avx512_bf16"}, True, "openvino"),                 # it runs model.onnx, int8 or not
    (INT8, {"avx2", "avx512_bf16"}, False, "onnxruntime-int8"),  # not installed: the next best
    (INT8, {"avx2", "fma"}, True, "onnxruntime-int8"),         # no native bf16: int8
    (INT8, set(), True, "onnxruntime-int8"),                    # flags unknown (not Linux): as AVX2
    (FP32, {"avx2"}, True, "onnxruntime-fp32"),
])
def test_the_rule(meta, flags, openvino, expected):
    runtime, why = runtimes.choose(meta, flags, have_openvino=openvino)
    assert runtime == expected and why


def test_a_runtime_that_failed_its_check_is_skipped():
    meta = {**INT8, "runtime_checks": {"openvino": {"ok": False}, "onnxruntime-int8": {"ok": True}}}
    assert runtimes.choose(meta, {"avx512_bf16"}, have_openvino=True) == (
        "onnxruntime-int8", "OpenVINO failed its check in export.json: onnxruntime on the int8 model")
    meta["runtime_checks"]["onnxruntime-int8"]["ok"] = False
    runtime, why = runtimes.choose(meta, {"avx2"}, have_openvino=True)
    assert runtime == "onnxruntime-fp32" and "lost more than 0.002 mean AUC" in why


def test_forced_runtimes_that_cannot_run_say_what_to_do(monkeypatch):
    with pytest.raises(runtimes.RuntimeChoiceError, match="choose one of auto, openvino"):
        runtimes.check("tensorrt", INT8, "exports/mini")
    with pytest.raises(runtimes.RuntimeChoiceError, match="exports/mini has no int8 model; export it with"):
        runtimes.check("onnxruntime-int8", FP32, "exports/mini")
    monkeypatch.setattr(runtimes, "installed", lambda module: False)
    with pytest.raises(runtimes.RuntimeChoiceError, match="OpenVINO is not installed here; pip install openvino"):
        runtimes.check("openvino", INT8, "exports/mini")
    runtimes.check("onnxruntime-fp32", FP32, "exports/mini")  # always possible


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16 amx_int8\n\n")
    assert runtimes.cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "avx512_bf16", "amx_int8"}
    assert runtimes.cpu_flags(str(tmp_path / "none")) == set()  # not Linux: no flags, the AVX2 rule


def test_a_small_job_goes_to_onnxruntime_int8_which_starts_sooner():
    assert runtimes.choose(INT8, {"avx512_bf16"}, have_openvino=True, small_job=True)[0] == "onnxruntime-int8"
    assert runtimes.choose(FP32, {"avx512_bf16"}, have_openvino=True, small_job=True)[0] == "openvino"  # no int8


def test_an_openvino_check_made_in_f32_says_nothing_of_bf16():
    """An export made on a CPU without bf16 checked OpenVINO in f32; a bf16 CPU runs it in bf16."""
    f32 = {**INT8, "runtime_checks": {"openvino": {"ok": False, "precision": "f32"}}}
    assert runtimes.choose(f32, {"avx512_bf16"}, have_openvino=True)[0] == "openvino"
    bf16 = {**INT8, "runtime_checks": {"openvino": {"ok": False, "precision": "bf16"}}}
    assert runtimes.choose(bf16, {"avx512_bf16"}, have_openvino=True)[0] == "onnxruntime-int8"
