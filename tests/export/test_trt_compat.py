"""check-trt: NVIDIA's ONNX parser where an edition of TensorRT imports (TensorRT for RTX in CI), and the static
report beside it, which runs without TensorRT."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from tests.conftest import requires_rtx
from vivit_deploy.cli import main
from vivit_deploy.errors import ModelFileError
from vivit_deploy.export.trt_compat import check_trt, parser_support, run_parser


def test_parser_list_is_data_with_its_source():
    support = parser_support()
    assert support.source.startswith("https://github.com/onnx/onnx-tensorrt/")
    assert {"MatMul", "Softmax", "LayerNormalization", "Conv", "Gelu"} <= support.supported
    assert not support.supported & support.unsupported
    assert support.opset_min <= 18 <= support.opset_max


def test_exported_fp16_graph_has_no_blocker(demo_onnx_fp16):
    report = check_trt(demo_onnx_fp16)
    assert report.passed, report.format()
    assert report.precision == "fp16"
    assert {f.check for f in report.findings} >= {"operators", "parser opset", "layernorm", "attention pattern", "io types"}
    assert all(f.level == "ok" for f in report.findings if f.check != "nvidia parser"), report.format()


def test_fp32_graph_passes_with_a_warning_about_engine_precision(demo_onnx):
    report = check_trt(demo_onnx)
    assert report.passed
    assert [f.check for f in report.findings if f.level == "warning" and f.check != "nvidia parser"] == ["engine precision"]
    # asking for an fp16 engine from the fp32 graph is a blocker: TensorRT 11 is strongly typed
    assert not check_trt(demo_onnx, precision="fp16").passed


def _graph(op: str, opset: int, elem=TensorProto.FLOAT):
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", elem, [2])],
                              [helper.make_tensor_value_info("y", elem, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def test_unsupported_op_opset_and_tensor_type_are_blockers(tmp_path):
    path = tmp_path / "odd.onnx"
    onnx.save_model(_graph("BitwiseNot", 22, TensorProto.UINT16), str(path))
    report = check_trt(path)
    blockers = {f.check: f.detail for f in report.blockers}
    assert "BitwiseNot" in blockers["operators"]
    assert "opset 22 is outside" in blockers["parser opset"]
    assert "uint16" in blockers["tensor types"]


def test_cli_exit_codes_and_json(demo_onnx_fp16, tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["check-trt", str(demo_onnx_fp16), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["passed"] is True
    bad = tmp_path / "bad.onnx"
    onnx.save_model(_graph("BitwiseNot", 18, TensorProto.INT32), str(bad))
    result = CliRunner().invoke(main, ["check-trt", str(bad)])
    assert result.exit_code == 1 and "[FAIL] operators" in result.stdout


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        check_trt(tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xfe not protobuf")
    with pytest.raises(ModelFileError):
        check_trt(junk)
    result = CliRunner().invoke(main, ["check-trt", str(junk)])
    assert result.exit_code == 1 and result.stderr.startswith("Error: ") and "Traceback" not in result.output


@requires_rtx
def test_nvidias_parser_reads_every_exported_precision(demo_onnx, demo_onnx_fp16, demo_onnx_int8, demo_onnx_fp8):
    import tensorrt_rtx

    for path in (demo_onnx, demo_onnx_fp16, demo_onnx_int8, demo_onnx_fp8):
        report = check_trt(path)
        assert report.parser_run.ran and report.parser_run.passed, report.format()
        assert report.findings[0].check == "nvidia parser" and report.findings[0].level == "ok"
        assert f"TensorRT for RTX {tensorrt_rtx.__version__}" in report.format()
        assert report.to_dict()["nvidia_parser"] == {"ran": True, "edition": "rtx", "version": tensorrt_rtx.__version__,
                                                     "passed": True, "errors": [], "reason": None}


@requires_rtx
def test_parser_errors_are_nvidias_per_node_verbatim(demo_onnx, tmp_path):
    from tests.export.test_trt_build import with_unsupported_node

    bad = with_unsupported_node(demo_onnx, tmp_path / "det.onnx")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["check-trt", str(bad), "--json", str(out)])
    assert result.exit_code == 1
    assert "[FAIL] nvidia parser: TensorRT for RTX" in result.stdout
    assert "with name: unsupported_det and operator: Det (checkDet): UNSUPPORTED_NODE" in result.stdout
    [error] = json.loads(out.read_text())["nvidia_parser"]["errors"]
    assert (error["node_name"], error["op"], error["code"]) == ("unsupported_det", "Det", "UNSUPPORTED_NODE")


def test_without_the_edition_asked_for_the_report_says_the_parser_did_not_run(demo_onnx):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT 10/11 is installed")
    run = run_parser(demo_onnx, trt="tensorrt")
    assert not run.ran and "TensorRT is not installed" in run.reason
    report = check_trt(demo_onnx, trt="tensorrt")
    assert report.passed and report.findings[0].level == "warning" and "not run" in report.findings[0].detail
    assert "the NVIDIA parser was not run" in report.format()
