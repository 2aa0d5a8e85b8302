"""load_runtime: which backend a target gets, and the errors for targets and options it cannot run."""

from __future__ import annotations

import numpy as np
import pytest

from vivit_deploy.demo import demo_model_dir
from vivit_deploy.errors import BackendUnavailableError, ConfigError, ModelFileError
from vivit_deploy.runtimes import backend_for, expected_precision, load_runtime, register_backend
from vivit_deploy.runtimes.base import Runtime


def test_backend_follows_the_target(tmp_path, demo_onnx):
    assert backend_for(demo_onnx) == "onnxruntime"
    assert backend_for(demo_model_dir()) == "torch"
    assert backend_for("google/vivit-b-16x2-kinetics400") == "torch"
    odd = tmp_path / "model.pt"
    odd.write_bytes(b"x")
    with pytest.raises(ConfigError, match="cannot tell which backend runs a .pt file"):
        backend_for(odd)


def test_expected_precision_names_what_the_runtime_will_report():
    assert expected_precision("torch", None, None) == "fp32"
    assert expected_precision("torch", None, "bf16") == "bf16"
    assert expected_precision("onnxruntime", "int8", None) == "int8"
    assert expected_precision("openvino", "fp32", None) == "fp32"
    assert expected_precision("openvino", "fp32", "bf16") == "bf16"
    assert expected_precision("openvino", "int8", "bf16") == "int8-bf16"
    assert expected_precision("openvino", "int8", "int8-bf16") == "int8-bf16"  # the reported name is accepted too
    with pytest.raises(ConfigError, match="OpenVINO runs it in fp32 or bf16"):
        expected_precision("openvino", "fp32", "fp16")


def test_unknown_backend_and_options_are_refused(demo_onnx):
    with pytest.raises(ConfigError, match="unknown backend 'tvm'"):
        load_runtime(demo_onnx, "tvm")
    with pytest.raises(ConfigError, match=r"does not take option\(s\) \['attn_implementation'\]"):
        load_runtime(demo_onnx, attn_implementation="eager")


def test_registering_a_backend_twice_is_refused():
    with pytest.raises(ConfigError, match="already registered"):
        @register_backend("torch")
        class Again(Runtime):
            def _run(self, pixel_values):
                return pixel_values


def test_onnx_precision_must_match_the_file(demo_onnx):
    with pytest.raises(ConfigError, match="is an fp32 graph; precision 'fp16' needs a file exported"):
        load_runtime(demo_onnx, precision="fp16")


def test_bad_device_is_refused(demo_onnx):
    with pytest.raises(ConfigError, match="device must be"):
        load_runtime(demo_onnx, device="gpu0")


def test_cuda_provider_where_cuda_cannot_start_is_a_clear_error(demo_onnx):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA provider starts here")
    with pytest.raises(BackendUnavailableError, match="could not start the CUDAExecutionProvider"):
        load_runtime(demo_onnx, device="cuda")


def test_missing_corrupt_and_foreign_onnx_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        load_runtime(tmp_path / "none.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    with pytest.raises(ModelFileError, match="ONNX Runtime cannot load it"):
        load_runtime(corrupt)
    from onnx import TensorProto, helper, save_model

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(foreign))
    with pytest.raises(ModelFileError, match="has no vivit_deploy metadata"):
        load_runtime(foreign)


def test_metadata_that_does_not_match_the_graph_is_refused(tmp_path, demo_onnx):
    import json

    import onnx

    model = onnx.load(str(demo_onnx))
    for prop in model.metadata_props:
        if prop.key == "vivit_deploy.input":
            spec = json.loads(prop.value)
            spec["frame_shape"] = [16, 3, 32, 32]
            prop.value = json.dumps(spec)
    edited = tmp_path / "edited.onnx"
    onnx.save_model(model, str(edited))
    with pytest.raises(ModelFileError, match="does not match its metadata"):
        load_runtime(edited)


def test_torch_runtime_in_bf16(demo_onnx):
    x = np.random.default_rng(0).standard_normal((2, 8, 3, 32, 32), dtype=np.float32)
    with load_runtime(demo_model_dir(), device="cpu", precision="bf16") as bf16, load_runtime(demo_onnx) as fp32:
        assert bf16.precision == "bf16"
        out = bf16.run(x)
        assert out.dtype == np.float32
        assert (out.argmax(1) == fp32.run(x).argmax(1)).all()


def test_an_onnx_runtime_process_never_imports_torch(demo_onnx):
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from vivit_deploy import load_runtime\n"
        f"with load_runtime({str(demo_onnx)!r}, device='cpu') as rt:\n"
        "    rt.run(np.zeros((1, 8, 3, 32, 32), np.float32))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
