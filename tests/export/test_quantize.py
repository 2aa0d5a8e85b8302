"""int8 export: ONNX Runtime's quantization tools take our files, the Q/DQ graph is where it should be,
calibration comes from videos or saved clips (never from nothing), and accuracy holds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from vivit_deploy.cli import export_command, main
from vivit_deploy.accuracy.inputs import random_inputs
from vivit_deploy.demo import SAMPLES, demo_model_dir, sample_videos
from vivit_deploy.errors import ConfigError, InputShapeError
from vivit_deploy.export import export_onnx
from vivit_deploy.export.graph_checks import summarize
from vivit_deploy.artifacts.metadata import read_onnx_metadata


def test_exported_files_pass_onnxruntimes_quantization_tools(demo_onnx, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(demo_onnx))
    initializers = {i.name for i in model.graph.initializer}
    assert not [v.name for v in model.graph.value_info if v.name in initializers]

    quant_pre_process(str(demo_onnx), str(tmp_path / "pre.onnx"))
    quantize_dynamic(str(demo_onnx), str(tmp_path / "dynamic.onnx"), weight_type=QuantType.QInt8)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"pixel_values": np.zeros((1, 8, 3, 32, 32), np.float32)}])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(tmp_path / "pre.onnx"), str(tmp_path / "static.onnx"), Reader())
    for name in ("dynamic", "static"):
        onnx.checker.check_model(str(tmp_path / f"{name}.onnx"))


def test_int8_graph_quantizes_the_weight_matmuls_and_nothing_else(demo_onnx_int8):
    model = onnx.load(str(demo_onnx_int8))
    summary = summarize(model)
    assert summary.quantized_matmuls == 4 * 4  # fused QKV, attention output, MLP in and out; 4 layers
    assert summary.qdq_on_norm_softmax == 0 and summary.asymmetric_qdq == 0
    assert summary.attention_blocks == summary.prescaled_attention_blocks == 4  # attention stays float
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "Gemm"):
            assert not any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input)
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}  # no stray domains from the quantizer


def test_int8_metadata_records_precision_and_calibration(demo_onnx_int8):
    metadata = read_onnx_metadata(demo_onnx_int8)
    assert metadata.precision == "int8"
    calibration = metadata.calibration
    assert calibration["clips"] == len(sample_videos()) and "videos from" in calibration["source"]
    assert calibration["quantized"] == {"MatMul": 16} and calibration["fused_qkv"] == 4
    assert calibration["excluded"] == {"attention products": 8, "classifier": 1}
    assert "zero point 0" in calibration["activations"]


def _agreement(classifier, sample_predictions) -> float:
    """The share of the sample videos a classifier labels as PyTorch fp32 does."""
    return float(np.mean([classifier.classify(path, top_k=1)[0].label == sample_predictions[path.name]
                          for path, _ in sample_videos()]))


def test_int8_keeps_the_demo_models_accuracy_on_the_samples(demo_onnx_int8, sample_predictions):
    from vivit_deploy.predict import VideoClassifier
    from vivit_deploy.runtimes import load_runtime

    with load_runtime(demo_onnx_int8) as runtime:
        assert runtime.precision == "int8"
        assert _agreement(VideoClassifier(runtime), sample_predictions) >= 1 - 1 / len(sample_videos())


def test_onnxruntime_runs_every_weight_matmul_of_the_int8_file_in_int8(demo_onnx_int8):
    from vivit_deploy.export.quantize import optimized_leftovers

    report = optimized_leftovers(demo_onnx_int8)
    assert report["dequantize_then_fp32_matmul"] == 0
    assert report.get("MatMulIntegerToFloat", 0) + report.get("QLinearMatMul", 0) == 16


def test_int8_of_a_tiny_random_model_calibrated_on_saved_clips(tiny_checkpoint, tmp_path):
    from vivit_deploy.model.checkpoint import load_config

    clips = random_inputs(load_config(tiny_checkpoint), 6)
    clips.save(tmp_path / "clips.npz")
    report = export_onnx(tiny_checkpoint, tmp_path / "tiny-int8.onnx", precision="int8",
                         calibration=tmp_path / "clips.npz", calibration_clips=4)
    assert report.passed and report.summary.quantized_matmuls == 4 * 2
    metadata = read_onnx_metadata(tmp_path / "tiny-int8.onnx")
    assert metadata.calibration["clips"] == 4 and "clips.npz" in metadata.calibration["source"]


def test_int8_without_calibration_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(export_command, [str(demo_model_dir()), "-o", str(tmp_path / "x.onnx"), "--precision", "int8"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: int8 needs calibration data: --calibration a directory of videos")
    assert not (tmp_path / "x.onnx").exists()


def test_bad_calibration_data_is_refused_before_exporting(tmp_path, tiny_checkpoint):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no readable videos to calibrate on"):
        export_onnx(demo_model_dir(), tmp_path / "a.onnx", precision="int8", calibration=tmp_path / "empty")
    from vivit_deploy.model.checkpoint import load_config

    random_inputs(load_config(tiny_checkpoint), 2).save(tmp_path / "tiny.npz")  # 4x32x32 clips, not the demo's 8
    with pytest.raises(InputShapeError, match=r"the model takes \(8, 3, 32, 32\)"):
        export_onnx(demo_model_dir(), tmp_path / "b.onnx", precision="int8", calibration=tmp_path / "tiny.npz")
    with pytest.raises(FileNotFoundError, match="no such calibration directory"):
        export_onnx(demo_model_dir(), tmp_path / "c.onnx", precision="int8", calibration=tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"apply to precision= int8 and fp8 \(calibration\) and fp16"):
        export_onnx(demo_model_dir(), tmp_path / "d.onnx", calibration=SAMPLES)
    assert not list(tmp_path.glob("*.onnx"))


def test_check_trt_reads_an_int8_graph(demo_onnx_int8):
    result = CliRunner().invoke(main, ["check-trt", str(demo_onnx_int8)])
    assert result.exit_code == 0, result.output
    assert "int8 graph" in result.output
    assert "[ok  ] symmetric: every Q/DQ is int8 with zero point 0" in result.output
    assert "[ok  ] float islands" in result.output and "domains" not in result.output


def test_fused_qkv_computes_what_three_matmuls_did():
    from onnx import TensorProto, helper, numpy_helper

    from vivit_deploy.export.quantize import fuse_shared_input_matmuls
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((6, n)).astype(np.float32) for n in (4, 4, 5)]
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"m{i}") for i in range(3)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(3)],
                              [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    x = rng.standard_normal((2, 6)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert fuse_shared_input_matmuls(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Split"]
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_fp8_export_is_checked_for_numerics_on_onnxruntimes_cpu(tmp_path, sample_predictions):
    from vivit_deploy.predict import VideoClassifier
    from vivit_deploy.runtimes import load_runtime

    path = tmp_path / "demo-fp8.onnx"
    report = export_onnx(demo_model_dir(), path, precision="fp8", calibration=SAMPLES)
    assert report.passed and report.opset == 19  # float8 Q/DQ are opset 19 ops
    model = onnx.load(str(path))
    summary = summarize(model)
    assert summary.quantized_matmuls == 16 and summary.asymmetric_qdq == 0 and summary.qdq_on_norm_softmax == 0
    assert max(summary.weight_types, key=summary.weight_types.get) == "float8e4m3fn"
    assert read_onnx_metadata(path).calibration["activations"].startswith("float8 e4m3fn")
    with load_runtime(path) as runtime:
        assert runtime.precision == "fp8" and runtime.describe()["graph_optimization"] == "basic (float8 Q/DQ)"
        assert _agreement(VideoClassifier(runtime), sample_predictions) >= 1 - 1 / len(sample_videos())
    result = CliRunner().invoke(main, ["check-trt", str(path)])
    assert result.exit_code == 0 and "fp8 needs a GPU of compute capability 8.9" in result.output
    with pytest.raises(ConfigError, match="fp8 Q/DQ needs opset= 19 or newer"):
        export_onnx(demo_model_dir(), tmp_path / "old.onnx", precision="fp8", calibration=SAMPLES, opset=18)


def test_calibration_probes_sit_next_to_their_producers_and_softmax_needs_none(tiny_checkpoint, tmp_path):
    """Probes at the end of the graph would keep every probed tensor alive to the end (ViViT-B's attention
    probabilities of all layers at once went past 24 GB); a Softmax output's range is [0, 1] without measuring."""
    from vivit_deploy.export.quantize import _insert_after_producers, activation_ranges, quantize
    from vivit_deploy.model.checkpoint import load_config

    export_onnx(tiny_checkpoint, tmp_path / "tiny.onnx")
    model = onnx.load(str(tmp_path / "tiny.onnx"))
    clips = random_inputs(load_config(tiny_checkpoint), 2).pixel_values
    input_name = model.graph.input[0].name
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    layer_norm = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    tensors = [softmax.output[0], layer_norm.output[0]]
    ranges = activation_ranges(model, tensors, clips, input_name)
    low, high = ranges[softmax.output[0]]
    assert 0.0 <= low < high <= 1.0 and ranges[layer_norm.output[0]][0] < 0 < ranges[layer_norm.output[0]][1]

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    marker = onnx.helper.make_node("Identity", [softmax.output[0]], ["probe_of_softmax"], name="probe_of_softmax")
    _insert_after_producers(probe.graph, {softmax.output[0]: [marker]})
    names = [n.name for n in probe.graph.node]
    assert names[names.index(softmax.name) + 1] == "probe_of_softmax"

    quantized, summary = quantize(model, clips, "two random clips", input_name, attention_products=("pv",))
    assert summary.attention_products  # the probabilities x values products got Q/DQ
    scales = {init.name: onnx.numpy_helper.to_array(init) for init in quantized.graph.initializer}
    q_of_softmax = [n for n in quantized.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == softmax.output[0]]
    assert q_of_softmax and float(scales[q_of_softmax[0].input[1]]) == pytest.approx(1.0 / 127)


@pytest.mark.slow
def test_attention_products_qk_from_the_cli_is_checked_and_builds_for_tensorrt_rtx(tmp_path):
    import importlib.util

    path = tmp_path / "demo-int8-qk.onnx"
    result = CliRunner().invoke(main, ["export", str(demo_model_dir()), "-o", str(path), "--precision", "int8",
                                       "--calibration", str(SAMPLES), "--attention-products", "qk"])
    assert result.exit_code == 0, result.output
    assert "16 weight MatMuls and 4 attention products read int8 Q/DQ" in result.output
    products = read_onnx_metadata(path).calibration["attention_products"]
    assert len(products) == 4  # Q @ K^T of each layer, named
    model = onnx.load(str(path))
    softmax_inputs = {n.input[0] for n in model.graph.node if n.op_type == "Softmax"}
    qk = [n for n in model.graph.node if n.name in products]
    assert len(qk) == 4 and all(n.op_type == "MatMul" and n.output[0] in softmax_inputs for n in qk)
    result = CliRunner().invoke(main, ["check-trt", str(path)])
    assert result.exit_code == 0 and "the 20 Q/DQ MatMuls run in int8 (4 of them attention products)" in result.output
    if importlib.util.find_spec("tensorrt_rtx") is not None:  # NVIDIA's builder takes int8 Q @ K^T too
        result = CliRunner().invoke(main, ["build-engine", str(path), "-o", str(tmp_path / "qk.engine"), "--trt", "rtx",
                                           "--compute-capability", "8.9"])
        assert result.exit_code == 0, result.output

    refused = CliRunner().invoke(main, ["export", str(demo_model_dir()), "-o", str(tmp_path / "x.onnx"),
                                        "--precision", "fp16", "--attention-products", "qk"])
    assert refused.exit_code == 1 and not (tmp_path / "x.onnx").exists()
    assert refused.stderr.strip().splitlines()[-1] == (
        "Error: --attention-products applies to --precision int8 and fp8, not fp16")
