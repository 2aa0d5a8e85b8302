"""The OpenVINO backend: precision is always explicit, int8 files run, and a missing OpenVINO is one line."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'vivit-deploy[openvino]'")

from vivit_deploy.cli import main  # noqa: E402
from vivit_deploy.demo import default_sample, demo_model_dir  # noqa: E402
from vivit_deploy.errors import BackendUnavailableError, ConfigError  # noqa: E402
from vivit_deploy.runtimes.cpu import cpu_has_bf16  # noqa: E402
from vivit_deploy.runtimes import load_runtime  # noqa: E402
from vivit_deploy.accuracy.tolerances import tolerance_for  # noqa: E402

requires_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 units (AVX512-BF16 or AMX)")


@pytest.fixture(scope="module")
def clips_and_reference():
    x = np.random.default_rng(1).standard_normal((3, 8, 3, 32, 32), dtype=np.float32)
    with load_runtime(demo_model_dir(), "torch", device="cpu") as reference:
        return x, reference.run(x)


def test_fp32_is_the_default_and_is_what_openvino_compiles(demo_onnx, clips_and_reference):
    x, expected = clips_and_reference
    with load_runtime(demo_onnx, "openvino") as runtime:
        assert runtime.precision == "fp32" and runtime.compute_precision == "fp32"
        assert runtime.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
        np.testing.assert_allclose(runtime.run(x), expected, atol=1e-4, rtol=1e-4)


@requires_bf16
def test_bf16_is_asked_for_and_named(demo_onnx, demo_onnx_int8, clips_and_reference):
    x, expected = clips_and_reference
    with load_runtime(demo_onnx, "openvino", precision="bf16") as runtime:
        assert runtime.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16"
        assert runtime.precision == "bf16"
        tolerance = tolerance_for("bf16")
        np.testing.assert_allclose(runtime.run(x), expected, atol=tolerance.atol, rtol=tolerance.rtol)
    with load_runtime(demo_onnx_int8, "openvino", precision="bf16") as runtime:
        assert runtime.precision == "int8-bf16"
    with load_runtime(demo_onnx_int8, "openvino", precision="int8-bf16") as runtime:  # the reported name works too
        assert runtime.compute_precision == "bf16"


@pytest.mark.filterwarnings("ignore::vivit_deploy.errors.InputRangeWarning")  # random clips; the warning has its own test
def test_int8_and_fp16_files_run(demo_onnx_int8, demo_onnx_fp16, clips_and_reference):
    x, expected = clips_and_reference
    for path, name in ((demo_onnx_int8, "int8"), (demo_onnx_fp16, "fp16")):
        with load_runtime(path, "openvino") as runtime:
            assert runtime.precision == name
            tolerance = tolerance_for(name)
            np.testing.assert_allclose(runtime.run(x), expected, atol=tolerance.atol, rtol=tolerance.rtol)


def test_refusals(demo_onnx, demo_onnx_int8):
    with pytest.raises(ConfigError, match="runs on the CPU here, not 'cuda'"):
        load_runtime(demo_onnx, "openvino", device="cuda")
    with pytest.raises(ConfigError, match="is an int8 graph; OpenVINO runs it in fp32 or bf16"):
        load_runtime(demo_onnx_int8, "openvino", precision="fp16")


def test_missing_openvino_names_the_extra(demo_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'vivit-deploy\[openvino\]'"):
        load_runtime(demo_onnx, "openvino")


def test_predict_with_backend_openvino(demo_onnx):
    result = CliRunner().invoke(main, ["predict", str(default_sample()), "--model", str(demo_onnx),
                                       "--backend", "openvino", "--json", "-"])
    assert result.exit_code == 0, result.output
    assert "openvino on cpu (fp32)" in result.stderr
