"""Accuracy you can locate and repair: probe points, per-layer drift, the exporter's diagnosis, --keep-fp32, and the
calibrated input range."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from tests.accuracy.conftest import OUTLIER_CHANNEL
from vivit_deploy.accuracy.inputs import random_inputs
from vivit_deploy.accuracy.layers import FP16_MAX, RangeWatch, layer_drift
from vivit_deploy.accuracy.tolerances import tolerance_for
from vivit_deploy.cli import export_command, main
from vivit_deploy.errors import ConfigError, ExportError, InputRangeWarning
from vivit_deploy.export import export_onnx
from vivit_deploy.artifacts.metadata import read_onnx_metadata
from vivit_deploy.model.probes import probe_points
from vivit_deploy.runtimes import load_runtime


# ---- probe points ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_every_export_names_its_probe_points_and_they_are_the_modules_outputs(demo_onnx, backend):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is not installed")
    points = probe_points(read_onnx_metadata(demo_onnx).config)
    assert [p.tensor for p in points][:3] == ["vivit.embeddings:output", "vivit.encoder.layer.0.layernorm_before:output",
                                              "vivit.encoder.layer.0.attention:output"]
    from vivit_deploy.demo import demo_model_dir

    x = random_inputs(read_onnx_metadata(demo_onnx).config, 2).pixel_values
    with load_runtime(demo_model_dir(), "torch", device="cpu", probes=True) as ref, \
            load_runtime(demo_onnx, backend, probes=True) as onnx_file:
        assert set(onnx_file.probe_names) == {p.tensor for p in points}
        ref_logits, ref_hidden = ref.run_probes(x)
        logits, hidden = onnx_file.run_probes(x)
        np.testing.assert_allclose(logits, ref_logits, atol=1e-4)
        for point in points:  # each name is the output of the module it names, in fp32
            np.testing.assert_allclose(hidden[point.tensor], ref_hidden[point.tensor], atol=1e-4, err_msg=point.tensor)


def test_a_runtime_without_probes_says_how_to_get_them(demo_onnx):
    with load_runtime(demo_onnx) as runtime, pytest.raises(ConfigError, match="probes=True"):
        runtime.run_probes(np.zeros((1, 8, 3, 32, 32), np.float32))


# ---- per-layer drift ------------------------------------------------------------------------------------------

def test_layer_drift_passes_a_good_file_and_reports_every_layer(demo_onnx_int8):
    from vivit_deploy.demo import demo_model_dir

    from vivit_deploy.accuracy.inputs import synthetic_inputs
    from vivit_deploy.video.preprocessing import VideoPreprocessor

    metadata = read_onnx_metadata(demo_onnx_int8)  # clips of the task it was calibrated for (the samples are of it)
    x = synthetic_inputs(metadata.config, VideoPreprocessor(metadata.preprocessor), 6).pixel_values
    with load_runtime(demo_model_dir(), "torch", device="cpu", probes=True) as ref, \
            load_runtime(demo_onnx_int8, probes=True) as candidate:
        report = layer_drift(ref, candidate, x, tolerance_for("int8"))
    assert report.passed and report.first_failing_layer is None and report.diagnosis is None
    assert [layer.layer for layer in report.layers] == [0, 1, 2, 3]
    assert all(layer.block.cosine > 0.99 and set(layer.parts) == {"layernorm_before", "attention", "layernorm_after",
                                                                      "output", "block"} for layer in report.layers)
    assert report.embeddings.cosine > 0.9999  # the tubelet projection stays float
    data = report.to_dict()
    assert data["first_failing_layer"] is None and len(data["layers"]) == 4 and data["layers"][2]["layer"] == 2
    json.dumps(data, allow_nan=False)


def test_the_range_watch_sees_what_fp16_cannot_hold_unless_it_is_kept(fp16_overflow_checkpoint):
    from vivit_deploy.model.checkpoint import load_model

    model = load_model(fp16_overflow_checkpoint)
    x = random_inputs(model.config, 2).pixel_values
    import torch

    with RangeWatch(model) as watch, torch.no_grad():
        model(torch.from_numpy(x))
    [overflow] = watch.overflows(FP16_MAX)
    assert (overflow.layer, overflow.part, overflow.kind) == (2, "output", "product")
    assert "intermediate.dense" in overflow.what and overflow.value > FP16_MAX
    assert watch.overflows(FP16_MAX, frozenset({"2.mlp"})) == [] == watch.overflows(FP16_MAX, frozenset({"2"}))
    assert watch.overflows(FP16_MAX, frozenset({"2.attention"}))  # the wrong part does not help


# ---- the export says where, and repairs -----------------------------------------------------------------------

def test_fp16_export_names_the_overflowing_layer_and_writes_nothing(fp16_overflow_checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(export_command, [str(fp16_overflow_checkpoint), "-o", str(out), "--precision", "fp16",
                                                 "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 1 and not out.exists()
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert "it breaks first in layer 2, MLP: MatMul overflow: the MLP's first product (intermediate.dense)" in errors[0]
    assert "--keep-fp32 2.mlp" in errors[0] and "fp16 holds 65504" in errors[0]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] is False and report["first_failing_layer"] == 2
    assert report["diagnosis"]["fix"] == "--keep-fp32 2.mlp" and report["diagnosis"]["op_kind"] == "MatMul overflow"


@pytest.mark.slow
def test_fp16_export_refuses_weights_beyond_fp16(four_layer_checkpoint, tmp_path):
    import torch

    from vivit_deploy.model.checkpoint import load_model

    model = load_model(four_layer_checkpoint)
    with torch.no_grad():
        model.vivit.encoder.layer[3].attention.output.dense.weight[0, 0] = 1e5
    with pytest.raises(ExportError, match=r"layer 3, attention: weight overflow: the weights of "
                                          r"vivit.encoder.layer.3.attention.output.dense reach 1e\+05; .*--keep-fp32 "
                                          r"3.attention"):
        export_onnx(model, tmp_path / "m.onnx", precision="fp16")
    assert export_onnx(model, tmp_path / "m.onnx", precision="fp16", keep_fp32="3.attention").passed


@pytest.mark.slow
def test_int8_export_names_the_outlier_channel(int8_outlier_checkpoint, int8_base_checkpoint, calibration_npz, tmp_path):
    export_onnx(int8_base_checkpoint, tmp_path / "base.onnx", precision="int8", calibration=calibration_npz,
                smooth_quant=0.0)  # passes
    with pytest.raises(ExportError) as info:  # without SmoothQuant, which would move the outlier into the weights
        export_onnx(int8_outlier_checkpoint, tmp_path / "m.onnx", precision="int8", calibration=calibration_npz,
                    smooth_quant=0.0)
    message = str(info.value)
    assert "\n" not in message and not (tmp_path / "m.onnx").exists()
    assert f"layer 1, MLP: int8 input range: channel {OUTLIER_CHANNEL} of layernorm_after's output" in message
    assert "--keep-fp32 1.mlp" in message
    report = info.value.report
    assert report.first_failing_layer == 1 and report.layer_drift.layers[0].passed
    assert not report.layer_drift.layers[1].passed


@pytest.mark.slow
def test_keep_fp32_auto_repairs_fp16_keeping_most_weights_in_fp16(fp16_overflow_checkpoint, tmp_path):
    report = export_onnx(fp16_overflow_checkpoint, tmp_path / "m.onnx", precision="fp16", keep_fp32="auto")
    assert report.passed and report.kept_fp32 == ("2.mlp",)
    assert [a["kept"] for a in report.search][:2] == [[], ["2.mlp"]]
    weights = report.summary.weight_types
    assert weights["float16"] > 3 * weights["float"]
    metadata = read_onnx_metadata(tmp_path / "m.onnx")
    assert metadata.kept_fp32 == ("2.mlp",) and metadata.precision == "fp16"
    from vivit_deploy.export.trt_compat import check_trt

    assert check_trt(tmp_path / "m.onnx").passed  # strongly typed, its Casts where the fp32 island starts and ends
    with load_runtime(tmp_path / "m.onnx") as runtime:
        assert np.isfinite(runtime.run(random_inputs(runtime.config, 2).pixel_values)).all()


def test_smooth_quant_repairs_the_outlier_with_every_matmul_in_int8(int8_outlier_checkpoint, calibration_npz, tmp_path):
    report = export_onnx(int8_outlier_checkpoint, tmp_path / "m.onnx", precision="int8", calibration=calibration_npz)
    assert report.passed and report.kept_fp32 == () and report.summary.quantized_matmuls == 4 * 4
    assert min(r.min_cosine for r in report.validation) > 0.999  # 0.96 without SmoothQuant
    assert "SmoothQuant alpha 0.5" in read_onnx_metadata(tmp_path / "m.onnx").calibration["method"]
    from vivit_deploy.export.trt_compat import check_trt

    assert check_trt(tmp_path / "m.onnx").passed


def test_keep_fp32_auto_repairs_int8_keeping_most_matmuls_in_int8(int8_outlier_checkpoint, calibration_npz, tmp_path):
    report = export_onnx(int8_outlier_checkpoint, tmp_path / "m.onnx", precision="int8", calibration=calibration_npz,
                         keep_fp32="auto", smooth_quant=0.0)
    assert report.passed and report.kept_fp32 == ("1.mlp",)
    assert report.summary.quantized_matmuls == 4 * 4 - 2
    assert read_onnx_metadata(tmp_path / "m.onnx").calibration["kept_fp32_modules"] == [
        "vivit.encoder.layer.1.intermediate", "vivit.encoder.layer.1.output"]
    assert not list(tmp_path.glob(".m.onnx*"))  # the attempts the search made are gone


@pytest.mark.slow
def test_an_explicit_keep_fp32_list(fp16_overflow_checkpoint, int8_outlier_checkpoint, calibration_npz, tmp_path):
    report = export_onnx(fp16_overflow_checkpoint, tmp_path / "a.onnx", precision="fp16", keep_fp32="3, 2.mlp,2.norms")
    assert report.kept_fp32 == ("2.mlp", "2.norms", "3") and report.passed and not report.search
    report = export_onnx(int8_outlier_checkpoint, tmp_path / "b.onnx", precision="int8", calibration=calibration_npz,
                         keep_fp32="1", smooth_quant=0.0)
    assert report.kept_fp32 == ("1",) and report.summary.quantized_matmuls == 12
    with pytest.raises(ExportError, match="--keep-fp32 2.mlp"):  # keeping the wrong layer does not repair it
        export_onnx(fp16_overflow_checkpoint, tmp_path / "c.onnx", precision="fp16", keep_fp32="1")


@pytest.mark.parametrize(("args", "message"), [
    (["--precision", "fp16", "--keep-fp32", "99"], "--keep-fp32 99: the model has 4 layers (0..3)"),
    (["--precision", "fp16", "--keep-fp32", "2.ffn"], "give layers (e.g. 2,5) or parts of them"),
    (["--precision", "fp32", "--keep-fp32", "auto"], "--keep-fp32 applies to fp16, int8 and fp8 exports"),
    (["--precision", "int8", "--keep-fp32", "1.norms", "--calibration", "CALIB"], "LayerNorm already runs in float"),
])
def test_bad_keep_fp32_values_are_one_line_errors(four_layer_checkpoint, calibration_npz, tmp_path, args, message):
    args = [str(calibration_npz) if a == "CALIB" else a for a in args]
    result = CliRunner().invoke(export_command, [str(four_layer_checkpoint), "-o", str(tmp_path / "m.onnx"), *args])
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.exit_code != 0 and len(errors) == 1 and message in errors[0], result.output
    assert not (tmp_path / "m.onnx").exists()


# ---- every part of the model: the branches by their own output, the embeddings, the head ----------------------

@pytest.mark.parametrize("unit", ["2", "2.attention", "2.mlp", "2.norms", "embeddings", "head"])
def test_a_kept_unit_computes_as_fp32_does_on_its_rounded_input(four_layer_checkpoint, unit):
    """Its weights are the fp32 model's (not fp16's rounding of them, which a unit is often kept for: weights below
    fp16's normal range or beyond its largest value), its input the fp16 graph's, cast up."""
    import torch

    from vivit_deploy.export.fp32_fallback import half_with_fp32_units, modules_of
    from vivit_deploy.model.checkpoint import load_model

    model = load_model(four_layer_checkpoint)
    with torch.no_grad():  # values fp16 cannot hold in every kept module: 1e-7 rounds to 1.19e-7, 1e5 to inf
        for name in modules_of([unit]):
            for parameter in model.get_submodule(name).parameters():
                parameter.mul_(1e-6 if parameter.dim() > 1 else 1.0)
    half = half_with_fp32_units(model, (unit,))
    for name in modules_of([unit]):
        kept, original = half.get_submodule(name), model.get_submodule(name)
        for (key, a), b in zip(kept.state_dict().items(), original.state_dict().values()):
            assert a.dtype == torch.float32 and torch.equal(a, b), key
    x = torch.from_numpy(random_inputs(model.config, 2, seed=3).pixel_values)
    captured: dict[str, tuple] = {}

    def capture(name):
        def hook(module, args, output):
            captured[name] = (args, output if isinstance(output, torch.Tensor) else output[0])
        return hook

    handles = [half.get_submodule(name).register_forward_hook(capture(name)) for name in modules_of([unit])]
    with torch.no_grad():
        half(x.half())
        for handle in handles:
            handle.remove()
        for name in modules_of([unit]):
            args, got = captured[name]
            expected = model.get_submodule(name)(*(a.float() if isinstance(a, torch.Tensor) else a for a in args))
            expected = expected if isinstance(expected, torch.Tensor) else expected[0]
            if got.dtype == torch.float16:  # back into the fp16 graph: rounded once, no more
                assert torch.equal(got, expected.half()), name
            else:  # into the next module of the unit, or the logits, which leave in fp32
                assert got.dtype == torch.float32 and torch.allclose(got, expected, rtol=1e-6, atol=0), name


@pytest.mark.slow
def test_int8_a_branch_wrong_against_its_own_output_is_named_while_the_stream_holds(int8_branch_outlier_checkpoint,
                                                                                    calibration_npz, tmp_path):
    with pytest.raises(ExportError) as info:
        export_onnx(int8_branch_outlier_checkpoint, tmp_path / "m.onnx", precision="int8", calibration=calibration_npz,
                    smooth_quant=0.0)
    report = info.value.report
    layer = report.layer_drift.layers[1]
    assert layer.block.cosine >= 0.99 and layer.parts["output"].cosine < 0.99  # the stream holds, the MLP does not
    assert layer.failing_branches == ("output",) and report.first_failing_layer == 1
    assert report.layer_drift.logits.cosine < 0.99
    message = str(info.value)
    assert "layer 1, MLP: int8 input range" in message and "--keep-fp32 1.mlp" in message
    assert "accumulates" not in message
    table = report.layer_drift.format_table()
    assert "         MLP " in table and "first failing: layer 1" in table
    repaired = export_onnx(int8_branch_outlier_checkpoint, tmp_path / "m.onnx", precision="int8",
                           calibration=calibration_npz, smooth_quant=0.0, keep_fp32="auto")
    assert repaired.passed and repaired.kept_fp32 == ("1.mlp",) and repaired.summary.quantized_matmuls == 4 * 4 - 2


@pytest.mark.slow
def test_fp16_a_head_that_only_works_in_fp32_is_named_and_kept(fp16_head_checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(export_command, [str(fp16_head_checkpoint), "-o", str(out), "--precision", "fp16",
                                                 "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 1 and not out.exists()
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert "it breaks first in the classifier (the logits): rounding" in error
    assert "lie below fp16's normal range" in error and "--keep-fp32 head" in error
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["first_failing"] == "logits" and report["first_failing_layer"] is None
    assert report["layer_drift"]["logits"]["cosine"] < 0.999 and report["layer_drift"]["final_norm"]["cosine"] > 0.9999
    repaired = export_onnx(fp16_head_checkpoint, out, precision="fp16", keep_fp32="auto")
    assert repaired.passed and repaired.kept_fp32 == ("head",)
    weights = repaired.summary.weight_types
    assert weights["float16"] > 20 * weights["float"]  # the final LayerNorm and a 32x5 classifier in fp32
    assert min(r.min_cosine for r in repaired.validation) > 0.99999


@pytest.mark.slow
def test_fp16_a_head_overflow_is_named_where_it_is(four_layer_checkpoint, tmp_path):
    import torch

    from vivit_deploy.model.checkpoint import load_model

    model = load_model(four_layer_checkpoint)
    with torch.no_grad():  # the final LayerNorm's output past 65504, the classifier reading it 1e5x smaller
        model.vivit.layernorm.weight *= 1e5
        model.vivit.layernorm.bias *= 1e5
        model.classifier.weight /= 1e5
    with pytest.raises(ExportError) as info:
        export_onnx(model, tmp_path / "m.onnx", precision="fp16")
    message = str(info.value)
    assert "fp16 range: the final LayerNorm: the final LayerNorm's output reaches" in message
    assert "it breaks first in the final LayerNorm: overflow" in message and "--keep-fp32 head" in message
    assert "logits are NaN or infinite" in message  # ONNX Runtime computed it and got inf/NaN too
    assert export_onnx(model, tmp_path / "m.onnx", precision="fp16", keep_fp32="head").passed


@pytest.mark.slow
def test_fp16_an_embedding_that_only_works_in_fp32_is_named_and_kept(fp16_embeddings_checkpoint, tmp_path):
    with pytest.raises(ExportError) as info:
        export_onnx(fp16_embeddings_checkpoint, tmp_path / "m.onnx", precision="fp16")
    message = str(info.value)
    assert "it breaks first in the embeddings (tubelet projection, CLS token, positions): rounding" in message
    assert "the tubelet projection reaches 5e+04 (fp16's step there is 32)" in message
    assert "--keep-fp32 embeddings" in message
    assert info.value.report.first_failing == "embeddings"
    repaired = export_onnx(fp16_embeddings_checkpoint, tmp_path / "m.onnx", precision="fp16", keep_fp32="auto")
    assert repaired.passed and repaired.kept_fp32 == ("embeddings",)
    weights = repaired.summary.weight_types
    assert weights["float16"] > 2 * weights["float"]  # the position table is a large share of so small a model
    assert read_onnx_metadata(tmp_path / "m.onnx").kept_fp32 == ("embeddings",)


def test_keep_fp32_outside_units_order_and_refusals(four_layer_checkpoint):
    from vivit_deploy.export.fp32_fallback import normalise, parse_keep_fp32
    from vivit_deploy.model.checkpoint import load_config

    config = load_config(four_layer_checkpoint)
    assert parse_keep_fp32("head, 2.mlp, embeddings", config, "fp16") == ("embeddings", "2.mlp", "head")
    assert normalise(["head", "3", "embeddings", "3.mlp"]) == ("embeddings", "3", "head")
    with pytest.raises(ConfigError, match="keep_fp32= head: the head already run in float in an int8 graph"):
        parse_keep_fp32("head", config, "int8")


def test_non_finite_logits_fail_and_carry_no_cosine():
    from vivit_deploy.accuracy.statistics import failures, logit_stats, row_cosines

    reference = np.array([[1.0, 2.0], [3.0, 4.0]])
    candidate = np.array([[1.0, 2.0], [np.inf, np.nan]])
    cosines = row_cosines(reference, candidate)
    assert cosines[0] == pytest.approx(1.0) and np.isnan(cosines[1])
    stats = logit_stats(reference, candidate)
    assert failures(reference, candidate, stats, tolerance_for("fp32"))[0] == "2 of 4 logits are NaN or infinite"


# ---- compare --layers -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_compare_layers_locates_the_failing_layer_table_json_and_plot(int8_outlier_checkpoint, calibration_npz, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib (for --plot) is not installed")
    broken = export_onnx(int8_outlier_checkpoint, tmp_path / "m.onnx", precision="int8", calibration=calibration_npz,
                         smooth_quant=0.0, validate=False).path
    out, plot = tmp_path / "cmp.json", tmp_path / "drift.png"
    result = CliRunner().invoke(main, ["compare", "--model", str(int8_outlier_checkpoint), "--onnx", str(broken),
                                       "--inputs", str(calibration_npz), "--layers", "--json", str(out), "--plot", str(plot)])
    assert result.exit_code == 1, result.output  # the logits drift past int8's tolerance too
    assert "first failing: layer 1" in result.stdout and "int8 input range" in result.stdout
    assert "      logits " in result.stdout  # the row after the final norm
    [candidate] = json.loads(out.read_text())["candidates"]
    assert candidate["first_failing_layer"] == 1 and [row["layer"] for row in candidate["layers"]] == [0, 1, 2, 3]
    assert candidate["layers"][0]["passed"] and not candidate["layers"][1]["passed"]
    assert candidate["layer_diagnosis"]["fix"] == "--keep-fp32 1.mlp"
    assert candidate["logits_drift"]["cosine"] < 0.99 and candidate["first_failing"] == "layer 1"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_plot_needs_layers(tmp_path):
    result = CliRunner().invoke(main, ["compare", "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 2 and "add --layers" in result.output


# ---- the calibrated input range -------------------------------------------------------------------------------

def test_inputs_outside_the_calibrated_range_warn_once_naming_the_share(demo_onnx_int8):
    metadata = read_onnx_metadata(demo_onnx_int8)
    low, high = metadata.calibrated_range
    assert -3.01 <= low < high <= 1.01  # the sample videos, preprocessed ((x/127.5 - 1 - 0.5) / 0.5)
    x = np.full((2, 8, 3, 32, 32), 0.5 * (low + high), np.float32)
    x[0, 0, 0, 0, :8] = high + 3  # 8 of 49152 values
    with load_runtime(demo_onnx_int8) as runtime, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runtime.run(x[1:])  # inside: no warning
        runtime.run(x)
        runtime.run(x)
    messages = [str(w.message) for w in caught if issubclass(w.category, InputRangeWarning)]
    assert len(messages) == 1 and "0.02% of the input values lie outside the range" in messages[0]
