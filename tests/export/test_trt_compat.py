"""check-trt: the static TensorRT report, which runs without TensorRT (and is all CI can run of it)."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from vivit_deploy.cli import main
from vivit_deploy.errors import ModelFileError
from vivit_deploy.export.trt_compat import check_trt, parser_support


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
    assert all(f.level == "ok" for f in report.findings), report.format()


def test_fp32_graph_passes_with_a_warning_about_engine_precision(demo_onnx):
    report = check_trt(demo_onnx)
    assert report.passed
    assert [f.check for f in report.findings if f.level == "warning"] == ["engine precision"]
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
