"""Engine building: the plan per edition and version, profiles and sidecars (everywhere); real builds with NVIDIA's
parser and compiler through TensorRT for RTX (no GPU needed, in the default run); TensorRT 10/11 builds where it and a
GPU exist."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from tests.conftest import requires_rtx, requires_tensorrt
from vivit_deploy.artifacts.engines import (
    EDITIONS, Profile, check_sidecar, make_sidecar, parse_targets, read_sidecar, sidecar_path,
)
from vivit_deploy.errors import BackendUnavailableError, ConfigError, ExportError, ModelFileError
from vivit_deploy.export.trt_build import build_engine, check_profile, nvidia_reason, parse_layers, plan_build
from vivit_deploy.artifacts.metadata import read_onnx_metadata


@pytest.mark.parametrize(
    ("version", "engine", "graph", "typed", "flag"),
    [
        ("11.4.1", "fp16", "fp16", True, False),
        ("11.0.0", "fp32", "fp32", True, False),
        ("10.13.0.35", "fp16", "fp16", True, False),
        ("10.12.0", "fp16", "fp16", True, False),
        ("10.8.0", "fp16", "fp32", False, True),
        ("10.8.0", "fp16", "fp16", False, True),
        ("10.3.0", "fp32", "fp32", False, False),
    ],
)
def test_build_plan_per_version(version, engine, graph, typed, flag):
    plan = plan_build(version, engine, graph)
    assert (plan.strongly_typed, plan.fp16_flag) == (typed, flag)
    assert plan.creation_flag == (typed and version.startswith("10.")) and plan.timing_cache


@pytest.mark.parametrize(("version", "typed", "int8_flag"), [("11.2.0", True, False), ("10.12.0", True, False),
                                                              ("10.8.0", False, True)])
def test_int8_engines_use_explicit_quantization(version, typed, int8_flag):
    plan = plan_build(version, "int8", "int8")
    assert (plan.strongly_typed, plan.fp16_flag, plan.int8_flag) == (typed, False, int8_flag)
    with pytest.raises(ConfigError, match="an int8 engine is built from the int8 Q/DQ graph"):
        plan_build(version, "int8", "fp32")
    with pytest.raises(ConfigError, match="that graph only builds an int8 engine"):
        plan_build(version, "fp16", "int8")
    fp8 = plan_build(version, "fp8", "fp8")
    assert (fp8.strongly_typed, fp8.fp8_flag, fp8.int8_flag) == (typed, int8_flag, False)


def test_build_plan_refusals():
    with pytest.raises(ConfigError, match="strongly typed, from an fp16 graph: export one with"):
        plan_build("11.1.0", "fp16", "fp32")
    with pytest.raises(ConfigError, match="an fp32 engine needs the fp32 graph"):
        plan_build("10.8.0", "fp32", "fp16")
    with pytest.raises(BackendUnavailableError, match="TensorRT 8.6.1 is not supported; .* 10.x and 11.x"):
        plan_build("8.6.1", "fp16", "fp16")


def test_the_rtx_plan_is_the_same_builder_with_the_other_editions_data():
    plan = plan_build("1.7.1.116", "fp16", "fp16", edition="rtx", targets=("8.6", "8.9"))
    assert plan.strongly_typed and not plan.creation_flag and not plan.builder_flags and not plan.timing_cache
    assert plan.targets == ("8.6", "8.9") and "TensorRT for RTX 1.7" in plan.reason
    assert plan_build("1.2.0", "int8", "int8", edition="rtx").builder_flags == ()
    with pytest.raises(ConfigError, match="TensorRT for RTX 1.7.1 builds fp16 engines strongly typed"):
        plan_build("1.7.1", "fp16", "fp32", edition="rtx")
    with pytest.raises(BackendUnavailableError, match="TensorRT for RTX 2.0 is not supported; .* 1.x"):
        plan_build("2.0", "fp16", "fp16", edition="rtx")


def test_compute_capabilities_are_checked_against_the_edition():
    rtx = EDITIONS["rtx"]
    assert parse_targets(None, rtx, "fp16") == ("8.0", "8.6", "8.9", "12.0")
    assert parse_targets(None, rtx, "fp8") == ("8.9", "12.0")  # only the targets with fp8 kernels
    assert parse_targets("8.9, sm86,120,8.6", rtx, "fp32") == ("8.6", "8.9", "12.0")
    with pytest.raises(ConfigError, match=r"9.0: TensorRT for RTX builds for 7.5, 8.0, .*Hopper"):
        parse_targets("9.0", rtx, "fp16")
    with pytest.raises(ConfigError, match="'ampere' is not a compute capability"):
        parse_targets("ampere", rtx, "fp16")
    with pytest.raises(ConfigError, match="compute_capabilities= is for TensorRT for RTX"):
        parse_targets("8.9", EDITIONS["tensorrt"], "fp16")
    assert parse_targets(None, EDITIONS["tensorrt"], "fp16") == ()


def test_profile_comes_from_the_flags_inside_the_file_limits(demo_onnx):
    metadata = read_onnx_metadata(demo_onnx)  # batch 1..32
    assert check_profile(1, None, None, metadata) == Profile(1, 8, 32)
    assert check_profile(2, 4, 16, metadata) == Profile(2, 4, 16)
    with pytest.raises(ConfigError, match="1 <= min <= opt <= max"):
        check_profile(4, 2, 8, metadata)
    with pytest.raises(ConfigError, match=r"outside what the ONNX file allows \(1..32\)"):
        check_profile(1, 8, 64, metadata)


def test_sidecar_round_trip_and_refusals(demo_onnx, tmp_path):
    metadata = read_onnx_metadata(demo_onnx)
    sidecar = make_sidecar(metadata, tensorrt_version="10.13.0", gpu_name="NVIDIA H100 80GB HBM3",
                           compute_capability="9.0", precision="fp16", profile=Profile(1, 4, 8),
                           onnx_sha256="0" * 64, build={})
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine bytes")
    with pytest.raises(ModelFileError, match="no sidecar m.engine.json next to the engine"):
        read_sidecar(engine)
    sidecar_path(engine).write_text(json.dumps(sidecar))
    loaded = read_sidecar(engine)
    assert loaded["edition"] == "tensorrt" and loaded["targets"] == ["9.0"]
    from vivit_deploy.artifacts.engines import engine_metadata

    _, engine_meta = engine_metadata(engine)
    assert engine_meta.input.batch_range == "1..8" and engine_meta.precision == "fp16"
    assert engine_meta.id2label == metadata.id2label and engine_meta.preprocessor == metadata.preprocessor
    with pytest.raises(Exception, match=r"batch 9 is outside the range this model takes \(1..8\)"):
        engine_meta.input.validate(np.zeros((9, 8, 3, 32, 32), np.float32))
    check_sidecar(loaded, tensorrt_version="10.13.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", engine="m")
    with pytest.raises(ModelFileError, match="built with TensorRT 10.13.0, this is TensorRT 11.0.0"):
        check_sidecar(loaded, tensorrt_version="11.0.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", engine="m")
    with pytest.raises(ModelFileError, match=r"built for NVIDIA H100 80GB HBM3 \(compute 9.0\), this GPU is NVIDIA A100"):
        check_sidecar(loaded, tensorrt_version="10.13.0", gpu_name="NVIDIA A100-SXM4-80GB", compute_capability="8.0", engine="m")
    with pytest.raises(ModelFileError, match="was built by TensorRT, not TensorRT for RTX"):
        check_sidecar(loaded, edition_name="rtx", tensorrt_version="10.13.0", gpu_name="G", compute_capability="9.0",
                      engine="m")
    sidecar_path(engine).write_text("{}")
    with pytest.raises(ModelFileError, match="not a vivit_deploy engine sidecar"):
        read_sidecar(engine)


def test_format_1_sidecars_read_as_tensorrt(demo_onnx, tmp_path):
    sidecar = make_sidecar(read_onnx_metadata(demo_onnx), tensorrt_version="10.13.0", gpu_name="G", compute_capability="8.9",
                           precision="fp32", profile=Profile(1, 1, 4), onnx_sha256="0" * 64, build={})
    for key in ("edition", "targets"):
        del sidecar[key]
    sidecar["format_version"] = 1
    engine = tmp_path / "old.engine"
    engine.write_bytes(b"x")
    sidecar_path(engine).write_text(json.dumps(sidecar))
    assert read_sidecar(engine)["edition"] == "tensorrt" and read_sidecar(engine)["targets"] == ["8.9"]


def test_an_rtx_sidecar_refuses_gpus_outside_its_targets(demo_onnx):
    sidecar = make_sidecar(read_onnx_metadata(demo_onnx), edition_name="rtx", tensorrt_version="1.7.1.116", gpu_name=None,
                           compute_capability=None, targets=("8.6", "8.9"), precision="fp16", profile=Profile(1, 4, 8),
                           onnx_sha256="0" * 64, build={})
    check_sidecar(sidecar, edition_name="rtx", tensorrt_version="1.7.1.116", gpu_name="RTX 4090", compute_capability="8.9",
                  engine="m")
    with pytest.raises(ModelFileError, match=r"built for compute capability 8.6, 8.9; .* is 12.0: rebuild with "
                                             r"--compute-capability 12.0"):
        check_sidecar(sidecar, edition_name="rtx", tensorrt_version="1.7.1.116", gpu_name="RTX 5090",
                      compute_capability="12.0", engine="m")
    with pytest.raises(ModelFileError, match="does not target compute capability 9.0 at all"):
        check_sidecar(sidecar, edition_name="rtx", tensorrt_version="1.7.1.116", gpu_name="NVIDIA H200",
                      compute_capability="9.0", engine="m")
    with pytest.raises(ModelFileError, match="built with TensorRT for RTX 1.7.1.116, this is TensorRT for RTX 1.8.0"):
        check_sidecar(sidecar, edition_name="rtx", tensorrt_version="1.8.0", gpu_name="RTX 4090", compute_capability="8.9",
                      engine="m")


def test_the_build_log_is_read_into_layers_memory_and_one_line_reasons():
    detailed = ("Layers:\nName: node_MatMul_28+node_MatMul_20_myl0_4, LayerType: gemm, Inputs: [ { Name: a, Dimensions: "
                "[-1,65,64], Strides: [1], StrideOrder: [0], Datatype: Half, Format: x }], Constants: [], Outputs: [ "
                "{ Name: b, Dimensions: [-1,65,192], Strides: [1], StrideOrder: [0], Datatype: Float, Format: x }], "
                "TacticName: t, StreamId: 0, Metadata: [ONNX Layer: node_MatMul_28][ONNX Layer: node_MatMul_20]")
    layers = parse_layers([detailed])
    assert layers == [{"name": "node_MatMul_28+node_MatMul_20_myl0_4", "type": "gemm",
                       "inputs": [{"name": "a", "shape": [-1, 65, 64], "dtype": "half"}],
                       "outputs": [{"name": "b", "shape": [-1, 65, 192], "dtype": "float"}],
                       "onnx_nodes": ["node_MatMul_28", "node_MatMul_20"]}]
    classic = "Layer(Myelin): {ForeignNode[a...b]}, Tactic: 0x0, pixel_values (Float[-1,8,3,32,32]) -> logits (Float[-1,4])"
    assert parse_layers([classic])[0]["outputs"] == [{"name": "logits", "shape": [-1, 4], "dtype": "float"}]
    error = ("IBuilder::buildSerializedNetwork: Error Code 1: Myelin ([pass.cpp:347: check_turing_op_compatibility] "
             "Cannot compile operation 'node_conv3d' for Turing (SM75): FP32 3D convolution is not supported. In "
             "compileGraph at /_src/optimizer/myelin/codeGenerator.cpp:2012)")
    assert nvidia_reason([error]) == ("Cannot compile operation 'node_conv3d' for Turing (SM75): FP32 3D convolution is "
                                      "not supported. (IBuilder::buildSerializedNetwork, error code 1, Myelin)")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_without_tensorrt_the_build_says_how_to_get_it(demo_onnx_fp16, tmp_path):
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed: `pip install tensorrt"):
        build_engine(demo_onnx_fp16, tmp_path / "m.engine", trt="tensorrt")
    assert not (tmp_path / "m.engine").exists()


# ---- TensorRT for RTX: NVIDIA's parser and compiler, ahead of time, no GPU ---------------------------------------

@requires_rtx
@pytest.mark.slow
def test_rtx_builds_the_demo_model_in_every_precision_with_a_report_and_sidecar(demo_rtx_engines):
    import tensorrt_rtx

    for precision, report in demo_rtx_engines.items():
        assert report.edition == "rtx" and report.version == tensorrt_rtx.__version__ and report.precision == precision
        assert report.targets == (("8.9", "12.0") if precision == "fp8" else ("8.0", "8.6", "8.9", "12.0"))
        assert report.engine.stat().st_size == report.size_bytes > 100_000
        assert report.weights_memory_bytes > 0 and report.activation_memory_bytes > 0
        types = report.layer_types()
        assert types.get("gemm", 0) >= 4 and all(layer["name"] for layer in report.layers)
        assert report.attention_blocks == 4
        assert {(t["name"], t["mode"]) for t in report.io_tensors} == {("pixel_values", "input"), ("logits", "output")}
        sidecar = read_sidecar(report.engine)
        assert sidecar["edition"] == "rtx" and sidecar["gpu"] is None and sidecar["targets"] == list(report.targets)
        assert sidecar["build"]["weights_memory_bytes"] == report.weights_memory_bytes
        assert sidecar["build"]["layers"] == report.layers and sidecar["profile"] == {"min": 1, "opt": 8, "max": 8}
        assert sidecar["precision"] == precision
    # weights: the int8/fp8 MatMul weights take a byte each, fp16 two, fp32 four (what is not quantized stays fp32)
    weights = {p: r.weights_memory_bytes for p, r in demo_rtx_engines.items()}
    assert weights["int8"] < weights["fp16"] < weights["fp32"] and weights["fp8"] < weights["fp16"]


@requires_rtx
def test_rtx_builds_for_the_targets_named(demo_onnx_fp16, tmp_path):
    report = build_engine(demo_onnx_fp16, tmp_path / "m.engine", trt="rtx", compute_capabilities="8.6,12.0",
                          min_batch=1, opt_batch=2, max_batch=4)
    assert report.targets == ("8.6", "12.0") and read_sidecar(report.engine)["targets"] == ["8.6", "12.0"]
    assert report.profile == Profile(1, 2, 4)
    assert "TensorRT for RTX" in report.format() and "compute capability 8.6, 12.0" in report.format()


@requires_rtx
def test_rtx_refusals_are_nvidias_reason_in_one_line_and_leave_nothing(demo_onnx_fp8, demo_onnx, tmp_path):
    out = tmp_path / "fp8.engine"
    with pytest.raises(ExportError, match=r"could not build .* for compute capability 8.6: Cannot compile for target\(s\) "
                                          r"sm86, because the model contains HW-specific datatypes: fp8_e4m3") as info:
        build_engine(demo_onnx_fp8, out, trt="rtx", compute_capabilities="8.6")
    assert "\n" not in str(info.value) and not out.exists() and not sidecar_path(out).exists()
    with pytest.raises(ConfigError, match="takes no timing cache"):
        build_engine(demo_onnx, tmp_path / "m.engine", trt="rtx", timing_cache=tmp_path / "t.cache")
    assert list(tmp_path.iterdir()) == []


def with_unsupported_node(source, out):
    """``source`` (a vivit-export file) with a Det node the TensorRT parser rejects, on a new output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    model.graph.initializer.append(numpy_helper.from_array(np.eye(3, dtype=np.float32), "square"))
    model.graph.node.append(helper.make_node("Det", ["square"], ["determinant"], name="unsupported_det"))
    model.graph.output.append(helper.make_tensor_value_info("determinant", TensorProto.FLOAT, []))
    onnx.save(model, str(out))
    return out


@requires_rtx
def test_a_node_the_parser_rejects_is_named_with_nvidias_code(demo_onnx, tmp_path):
    bad = with_unsupported_node(demo_onnx, tmp_path / "det.onnx")
    with pytest.raises(ExportError, match=r"ONNX parser rejected .*det.onnx: In node \d+ with name: unsupported_det and "
                                          r"operator: Det \(checkDet\): UNSUPPORTED_NODE"):
        build_engine(bad, tmp_path / "det.engine", trt="rtx")
    assert not (tmp_path / "det.engine").exists()


@requires_rtx
@pytest.mark.slow
def test_turing_builds_the_fp16_graph_only(demo_onnx, demo_onnx_fp16, demo_onnx_int8, tmp_path):
    """TensorRT for RTX compiles no fp32 GEMM (nor fp32 3-D convolution) for Turing (SM75): there only the fp16 graph
    builds, whichever way the tubelet projection is written."""
    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.export import export_onnx

    assert build_engine(demo_onnx_fp16, tmp_path / "fp16-sm75.engine", trt="rtx", compute_capabilities="7.5").targets == ("7.5",)
    for source in (demo_onnx, demo_onnx_int8):  # the fp32 parts of the int8 graph too
        with pytest.raises(ExportError, match=r"for Turing \(SM75\): FP32 GEMM is not supported"):
            build_engine(source, tmp_path / f"{source.stem}-sm75.engine", trt="rtx", compute_capabilities="7.5")
    conv = export_onnx(demo_model_dir(), tmp_path / "conv.onnx", tubelet="conv", validate=False).path
    with pytest.raises(ExportError, match=r"Cannot compile operation 'node_conv3d' for Turing \(SM75\): FP32 3D "
                                          "convolution is not supported"):
        build_engine(conv, tmp_path / "conv.engine", trt="rtx", compute_capabilities="7.5")
    conv16 = export_onnx(demo_model_dir(), tmp_path / "conv16.onnx", tubelet="conv", precision="fp16", validate=False).path
    assert build_engine(conv16, tmp_path / "conv16.engine", trt="rtx", compute_capabilities="7.5").size_bytes > 0


@requires_rtx
def test_build_engine_command(demo_onnx_fp16, tmp_path):
    from click.testing import CliRunner

    from vivit_deploy.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["build-engine", str(demo_onnx_fp16), "-o", str(tmp_path / "m.engine"), "--trt", "rtx",
                                  "--compute-capability", "8.9", "--max-batch", "4", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["edition"] == "rtx" and report["targets"] == ["8.9"] and report["layers"]
    assert report["activation_memory_bytes"] > 0 and report["size_bytes"] == (tmp_path / "m.engine").stat().st_size
    result = runner.invoke(main, ["build-engine", str(demo_onnx_fp16), "-o", str(tmp_path / "n.engine"),
                                  "--compute-capability", "9.0"])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "Hopper" in result.output


@requires_rtx
@pytest.mark.slow
def test_rtx_builds_vivit_b_fp16(tmp_path):
    """The full ViViT-B/16x2 geometry (random weights), fp16, batch 1..8, for Ada."""
    from vivit_deploy.bench.plan import random_checkpoint
    from vivit_deploy.export import export_onnx

    checkpoint, _ = random_checkpoint("vivit-b-16x2", tmp_path / "ckpt")
    onnx_file = export_onnx(checkpoint, tmp_path / "vivit-b-fp16.onnx", precision="fp16", max_batch=8, validate=False).path
    report = build_engine(onnx_file, tmp_path / "vivit-b-fp16.engine", trt="rtx", compute_capabilities="8.9")
    assert report.size_bytes > 150e6 and report.weights_memory_bytes > 150e6  # 86M parameters in fp16
    assert report.activation_memory_bytes > report.weights_memory_bytes / 10 and report.profile.max == 8
    types = report.layer_types()
    assert types.get("gemm", 0) + types.get("runtime_fusion", 0) >= 12 * 4  # Q/K/V (fused), out, MLP in and out
    # NVIDIA's compiler fuses every MatMul -> Softmax -> MatMul block (Q pre-scaled) into one attention kernel in fp16
    assert report.attention_blocks == 12 and len(report.fused_attention) == 12, report.format()


# ---- with TensorRT 10/11 and a GPU -------------------------------------------------------------------------------

@pytest.mark.tensorrt
@requires_tensorrt
def test_engines_build_with_sidecars_and_the_second_build_reuses_the_timing_cache(demo_engines, demo_onnx, tmp_path):
    for precision in ("fp32", "fp16"):
        report = demo_engines[precision]
        sidecar = read_sidecar(report.engine)
        assert sidecar["precision"] == precision and sidecar["profile"] == {"min": 1, "opt": 8, "max": 8}
        assert sidecar["edition"] == "tensorrt" and sidecar["gpu"]["name"]
    cache = demo_engines["cache"]
    size = cache.stat().st_size
    assert size > 0
    again = build_engine(demo_onnx, tmp_path / "again.engine", trt="tensorrt", max_batch=8, timing_cache=cache)
    assert again.engine.is_file() and cache.stat().st_size >= size
