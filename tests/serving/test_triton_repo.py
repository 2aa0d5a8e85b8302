"""triton-repo without a server: what the configs say, that Triton's ModelConfig takes them, that a
mismatch writes nothing, and the python-backend models driven through a stand-in for Triton's utils."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("tritonclient", reason="tritonclient is not installed: pip install 'vivit-deploy[triton]'")

from tests.conftest import engine_without_tensorrt  # noqa: E402
from vivit_deploy.cli import main  # noqa: E402
from vivit_deploy.demo import demo_model_dir  # noqa: E402
from vivit_deploy.errors import BackendUnavailableError, ConfigError, ModelFileError  # noqa: E402
from vivit_deploy.artifacts.metadata import read_onnx_metadata  # noqa: E402
from vivit_deploy.serving.model_config import ServingConfigError, check_against_metadata, parse_config  # noqa: E402
from vivit_deploy.serving.repository import write_repository  # noqa: E402


def parsed(repo, name):
    return parse_config((repo / name / "config.pbtxt").read_text(), name)


def test_onnx_file_gets_an_onnxruntime_model_and_the_frames_ensemble(demo_onnx, tmp_path):
    repo = tmp_path / "repo"
    report = write_repository(demo_onnx, repo, preferred_batch=[4, 8], max_queue_delay_us=500)
    assert set(report.models) == {"vivit", "vivit_preprocess", "vivit_frames"}
    assert sorted(p.name for p in repo.iterdir()) == ["vivit", "vivit_frames", "vivit_preprocess"]  # no temp dirs left
    model = parsed(repo, "vivit")
    assert model.platform == "onnxruntime_onnx" and model.max_batch_size == 32
    assert [(i.name, list(i.dims)) for i in model.input] == [("pixel_values", [8, 3, 32, 32])]
    assert [(o.name, list(o.dims), o.label_filename) for o in model.output] == [("logits", [4], "labels.txt")]
    assert list(model.dynamic_batching.preferred_batch_size) == [4, 8]
    assert model.dynamic_batching.max_queue_delay_microseconds == 500
    assert model.instance_group[0].kind == model.instance_group[0].KIND_GPU
    assert model.parameters["vivit_deploy.frames_model"].string_value == "vivit_frames"
    assert (repo / "vivit" / "1" / "model.onnx").read_bytes() == demo_onnx.read_bytes()
    assert (repo / "vivit" / "labels.txt").read_text().splitlines() == ["moving left", "moving right", "moving up", "moving down"]
    frames = parsed(repo, "vivit_frames")
    assert frames.platform == "ensemble"
    assert [s.model_name for s in frames.ensemble_scheduling.step] == ["vivit_preprocess", "vivit"]
    from vivit_deploy.serving.model_config import import_model_config_pb2

    assert list(frames.input[0].dims) == [8, -1, -1, 3] and frames.input[0].data_type == import_model_config_pb2().TYPE_UINT8
    pre = parsed(repo, "vivit_preprocess")
    assert pre.backend == "python"
    assert "PreprocessModel as TritonPythonModel" in (repo / "vivit_preprocess/1/model.py").read_text()


def test_python_platform_serves_our_runtime_on_the_cpu(demo_onnx, tmp_path):
    write_repository(demo_onnx, tmp_path / "repo", platform="python", python_backend="openvino", python_precision="bf16",
                     ensemble=False)
    model = parsed(tmp_path / "repo", "vivit")
    assert model.backend == "python" and model.instance_group[0].kind == model.instance_group[0].KIND_CPU
    params = {k: v.string_value for k, v in model.parameters.items()}
    assert params["vivit_deploy.runtime.backend"] == "openvino" and params["vivit_deploy.served_precision"] == "bf16"
    assert params["vivit_deploy.precision"] == "fp32"  # the file's own, unchanged
    assert (tmp_path / "repo" / "vivit" / "1" / demo_onnx.name).exists()
    assert "vivit_deploy.frames_model" not in params


def test_engine_gets_a_tensorrt_plan_with_its_profile_and_version(demo_onnx, tmp_path):
    engine = engine_without_tensorrt(tmp_path / "demo.engine", demo_onnx, precision="fp16", profile=(1, 4, 16),
                                     gpu_name="NVIDIA H100 80GB HBM3")
    report = write_repository(engine, tmp_path / "repo", ensemble=False)
    model = parsed(tmp_path / "repo", "vivit")
    assert model.platform == "tensorrt_plan" and model.max_batch_size == 16
    assert list(model.dynamic_batching.preferred_batch_size) == [4]
    text = (tmp_path / "repo" / "vivit" / "config.pbtxt").read_text()
    assert "# TensorRT 10.13.0 built this engine for NVIDIA H100 80GB HBM3" in text
    assert any("TensorRT 10.13.0" in note for note in report.notes)
    assert (tmp_path / "repo" / "vivit" / "1" / "model.plan").read_bytes() == b"serialized engine"


def test_an_rtx_engine_is_served_by_our_runtime_in_the_python_backend_not_tensorrt_plan(demo_onnx, tmp_path):
    engine = engine_without_tensorrt(tmp_path / "demo.engine", demo_onnx, precision="fp16", profile=(1, 4, 16),
                                     tensorrt_version="1.7.1.116", edition="rtx")
    result = CliRunner().invoke(main, ["triton-repo", str(engine), "-o", str(tmp_path / "repo")])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "is a TensorRT for RTX engine, which Triton's tensorrt_plan backend cannot load" in result.stderr
    assert "--platform python" in result.stderr and not (tmp_path / "repo").exists()
    report = write_repository(engine, tmp_path / "repo", platform="python", ensemble=False)
    model = parsed(tmp_path / "repo", "vivit")
    params = {k: v.string_value for k, v in model.parameters.items()}
    assert model.backend == "python" and params["vivit_deploy.runtime.backend"] == "tensorrt"
    assert params["vivit_deploy.runtime.device"] == "cuda" and model.instance_group[0].kind == model.instance_group[0].KIND_GPU
    assert (tmp_path / "repo" / "vivit" / "1" / "demo.engine.json").is_file()
    assert any("tensorrt_rtx 1.7.1.116" in note and "8.6, 8.9" in note for note in report.notes)
    with pytest.raises(ConfigError, match="an engine runs on a GPU: python_device=cuda"):
        write_repository(engine, tmp_path / "repo2", platform="python", python_device="cpu", ensemble=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--platform", "tensorrt"], "--platform tensorrt serves a TensorRT engine"),
        (["--ort-tensorrt", "--kind", "cpu"], "--ort-tensorrt is ONNX Runtime's TensorRT accelerator"),
        (["--preferred-batch", "4,64"], "preferred batch sizes [4, 64] outside 1..32"),
        (["--platform", "python", "--python-backend", "tensorrt"], "--python-backend tensorrt runs an engine, not an onnx"),
        (["--name", "a/b"], "--name must be letters, digits"),
        (["--video", "--max-pixels", "0"], "Invalid value for '--max-pixels'"),
        (["--video", "--max-video-bytes", "12X"], "'12X' is not a positive size"),
        (["--video", "--video-instances", "0"], "Invalid value for '--video-instances'"),
        (["--max-video-bytes", "1M", "--video-instances", "3"], "--max-video-bytes, --video-instances set the video model: add --video"),
    ],
)
def test_bad_options_are_one_line_errors_and_write_nothing(demo_onnx, tmp_path, args, message):
    result = CliRunner().invoke(main, ["triton-repo", str(demo_onnx), "-o", str(tmp_path / "repo"), *args])
    assert result.exit_code == (2 if any(k in message for k in ("Invalid value", "positive size", "add --video")) else 1), \
        result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "repo").exists() or not list((tmp_path / "repo").iterdir())


def test_a_video_model_takes_one_file_and_calls_a_model_of_the_repository(demo_onnx, tmp_path):
    """--video: vivit_video takes one encoded file (BYTES, no batch axis) and optional settings, answers the logits with
    their labels and what the reading found; the model it calls must be one of the repository's, taking pixel_values
    and writing logits, or nothing is written."""
    from vivit_deploy.serving.model_config import check_video_model, import_model_config_pb2

    pb2 = import_model_config_pb2()
    result = CliRunner().invoke(main, ["triton-repo", str(demo_onnx), "-o", str(tmp_path / "repo"), "--platform",
                                       "python", "--video", "--max-video-bytes", "1K", "--max-pixels", "4096",
                                       "--video-instances", "3"])
    assert result.exit_code == 0, result.output
    assert "vivit_video: python backend: an encoded video file (TYPE_BYTES, up to 1,024 bytes)" in result.output
    video = parsed(tmp_path / "repo", "vivit_video")
    assert video.backend == "python" and video.max_batch_size == 0 and not video.HasField("dynamic_batching")
    assert [(i.name, pb2.DataType.Name(i.data_type), list(i.dims), i.optional) for i in video.input] == [
        ("video", "TYPE_STRING", [1], False), ("num_clips", "TYPE_INT32", [1], True),
        ("sampling", "TYPE_STRING", [1], True), ("frame_sample_rate", "TYPE_INT32", [1], True),
        ("autorotate", "TYPE_BOOL", [1], True)]
    assert [(o.name, list(o.dims), o.label_filename) for o in video.output] == [
        ("logits", [4], "labels.txt"), ("damaged_frames", [1], ""), ("read_notes", [1], "")]
    assert video.instance_group[0].count == 3 and video.instance_group[0].kind == video.instance_group[0].KIND_CPU
    params = {k: v.string_value for k, v in video.parameters.items()}
    assert (params["vivit_deploy.video.model_step"], params["vivit_deploy.video.max_bytes"],
            params["vivit_deploy.video.max_pixels"]) == ("vivit", "1024", "4096")
    assert parsed(tmp_path / "repo", "vivit").parameters["vivit_deploy.video_model"].string_value == "vivit_video"
    assert "VideoModel as TritonPythonModel" in (tmp_path / "repo/vivit_video/1/model.py").read_text()
    steps = {"vivit": types.SimpleNamespace(inputs=[types.SimpleNamespace(name="pixel_values")],
                                            outputs=[types.SimpleNamespace(name="logits")])}
    check_video_model(video, steps, "vivit_video/config.pbtxt")  # as written: its step exists
    with pytest.raises(ServingConfigError, match="its model step 'vivit' is not a model of the repository"):
        check_video_model(video, {}, "vivit_video/config.pbtxt")
    frames = {"vivit": types.SimpleNamespace(inputs=[types.SimpleNamespace(name="frames")], outputs=steps["vivit"].outputs)}
    with pytest.raises(ServingConfigError, match="does not take 'pixel_values' and write 'logits'"):
        check_video_model(video, frames, "vivit_video/config.pbtxt")
    video.max_batch_size = 8
    with pytest.raises(ServingConfigError, match="max_batch_size must be 0"):
        check_video_model(video, steps, "vivit_video/config.pbtxt")


def test_existing_models_are_never_overwritten(demo_onnx, tmp_path):
    write_repository(demo_onnx, tmp_path / "repo", ensemble=False)
    before = (tmp_path / "repo" / "vivit" / "config.pbtxt").read_text()
    with pytest.raises(ConfigError, match="already has model"):
        write_repository(demo_onnx, tmp_path / "repo")
    assert (tmp_path / "repo" / "vivit" / "config.pbtxt").read_text() == before


def test_configs_are_parsed_by_tritons_own_message(demo_onnx):
    with pytest.raises(ServingConfigError, match='has no field named "preferred_batch"'):
        parse_config('name: "x"\npreferred_batch: 4\n', "x/config.pbtxt")
    config = parse_config('name: "vivit"\nmax_batch_size: 32\n'
                          'input [ { name: "pixel_values" data_type: TYPE_FP32 dims: [ 8, 3, 32, 48 ] } ]\n'
                          'output [ { name: "logits" data_type: TYPE_FP16 dims: [ 4 ] } ]\n', "vivit/config.pbtxt")
    with pytest.raises(ServingConfigError, match=r"input dims \[8, 3, 32, 48\], the model takes \[8, 3, 32, 32\].*TYPE_FP16"):
        check_against_metadata(config, read_onnx_metadata(demo_onnx), "vivit/config.pbtxt", batch_max=32)


# ---- the python-backend models, with a stand-in for triton_python_backend_utils --------------------

class _Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class _Response:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error = output_tensors, error


@pytest.fixture
def pb_utils(monkeypatch):
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor
    module.InferenceResponse = _Response
    module.TritonError = lambda message: message
    module.get_input_tensor_by_name = lambda request, name: request.get(name)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    return module


def _args(repo, name):
    return {"model_config": json.dumps({"parameters": {k: {"string_value": v.string_value} for k, v in
                                                       parsed(repo, name).parameters.items()}}),
            "model_repository": str(repo / name), "model_version": "1", "model_instance_kind": "CPU"}


def test_classifier_model_batches_requests_and_answers_each(demo_onnx, tmp_path, pb_utils):
    from vivit_deploy.runtimes import load_runtime
    from vivit_deploy.serving.python_backend import ClassifierModel

    repo = tmp_path / "repo"
    write_repository(demo_onnx, repo, platform="python", ensemble=False)
    model = ClassifierModel()
    model.initialize(_args(repo, "vivit"))
    x = np.random.default_rng(0).standard_normal((3, 8, 3, 32, 32), dtype=np.float32)
    requests = [{"pixel_values": _Tensor("pixel_values", x[:1])}, {"pixel_values": _Tensor("pixel_values", x[1:])},
                {"pixel_values": _Tensor("pixel_values", x[:1, :7])}, {}]
    responses = model.execute(requests)
    with load_runtime(demo_onnx, device="cpu") as local:
        expected = local.run(x)
    np.testing.assert_allclose(responses[0].output_tensors[0].array, expected[:1], atol=1e-6)
    np.testing.assert_allclose(responses[1].output_tensors[0].array, expected[1:], atol=1e-6)
    assert "frames 7 (expected 8)" in responses[2].error and responses[3].error == "no input 'pixel_values'"
    model.finalize()


def test_preprocess_model_is_the_shared_preprocessor(demo_onnx, tmp_path, pb_utils):
    from vivit_deploy.video.preprocessing import VideoPreprocessor
    from vivit_deploy.serving.python_backend import PreprocessModel

    repo = tmp_path / "repo"
    write_repository(demo_onnx, repo)
    model = PreprocessModel()
    model.initialize(_args(repo, "vivit_preprocess"))
    frames = np.random.default_rng(1).integers(0, 256, (2, 8, 48, 64, 3), dtype=np.uint8)
    other = np.random.default_rng(2).integers(0, 256, (1, 8, 40, 40, 3), dtype=np.uint8)
    responses = model.execute([{"frames": _Tensor("frames", frames)}, {"frames": _Tensor("frames", other)},
                               {"frames": _Tensor("frames", frames.astype(np.float32))}])
    expected = VideoPreprocessor(read_onnx_metadata(demo_onnx).preprocessor)
    np.testing.assert_array_equal(responses[0].output_tensors[0].array, expected(frames))
    np.testing.assert_array_equal(responses[1].output_tensors[0].array, expected(other))  # another size, own batch
    assert responses[2].error == "frames must be uint8 RGB, got float32"


def test_triton_urls_and_unreachable_servers_are_one_line_errors(tmp_path, monkeypatch):
    from vivit_deploy.runtimes import load_runtime
    from vivit_deploy.serving.local_server import free_port
    from vivit_deploy.runtimes.triton_runtime import TritonError

    with pytest.raises(ModelFileError, match=r"a Triton model is triton://host:port/MODEL\[/VERSION\]"):
        load_runtime("triton://127.0.0.1:8000")
    with pytest.raises(TritonError, match=rf"no Triton server answers at 127.0.0.1:{(port := free_port())}"):
        load_runtime(f"triton://127.0.0.1:{port}/vivit", timeout=2)
    with pytest.raises(ConfigError, match="no backend serves grpc://"):
        load_runtime("grpc://127.0.0.1:8001/vivit")
    monkeypatch.setitem(sys.modules, "tritonclient.http", None)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'vivit-deploy\[triton\]'"):
        load_runtime("triton://127.0.0.1:8000/vivit")


def test_a_checkpoint_is_exported_first_unless_pytorch_serves_it(tmp_path):
    report = write_repository(demo_model_dir(), tmp_path / "repo", ensemble=False, kind="cpu")
    assert "onnxruntime (onnx, fp32" in report.models["vivit"]
    write_repository(demo_model_dir(), tmp_path / "torch", platform="python", python_backend="torch", ensemble=False)
    params = {k: v.string_value for k, v in parsed(tmp_path / "torch", "vivit").parameters.items()}
    assert params["vivit_deploy.runtime.backend"] == "torch"
    assert (tmp_path / "torch" / "vivit" / "1" / "demo-model" / "model.safetensors").exists()
