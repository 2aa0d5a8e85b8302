"""The TensorRT backend: refusals that need no GPU, and parity where TensorRT and a GPU exist."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import engine_without_tensorrt, requires_rtx, requires_rtx_gpu, requires_tensorrt, tensorrt_missing
from vivit_deploy.demo import demo_model_dir, sample_videos
from vivit_deploy.errors import BackendUnavailableError, ModelFileError
from vivit_deploy.runtimes import backend_for, load_runtime


def test_engine_files_go_to_tensorrt(tmp_path):
    assert backend_for(tmp_path / "m.engine") == backend_for(tmp_path / "m.plan") == "tensorrt"


def test_missing_engine_and_missing_sidecar(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such TensorRT engine"):
        load_runtime(tmp_path / "none.engine")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ModelFileError, match="no sidecar"):
        load_runtime(engine)


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT and a GPU are present")
def test_engine_with_sidecar_but_no_tensorrt_is_a_clear_error(tmp_path, demo_onnx):
    engine = engine_without_tensorrt(tmp_path / "m.engine", demo_onnx)
    with pytest.raises(BackendUnavailableError):
        load_runtime(engine)


@requires_rtx
def test_an_rtx_engine_without_a_gpu_is_one_line_saying_a_cuda_gpu_is_needed(demo_rtx_engines):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    engine = demo_rtx_engines["fp16"].engine
    with pytest.raises(BackendUnavailableError, match="is a TensorRT for RTX engine: it needs a CUDA GPU, and none is "
                                                      "visible here") as info:
        load_runtime(engine)
    assert "\n" not in str(info.value)
    from click.testing import CliRunner

    from vivit_deploy.cli import main

    result = CliRunner().invoke(main, ["predict", str(sample_videos()[0][0]), "--model", str(engine)])
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert result.exit_code == 1 and len(errors) == 1 and "needs a CUDA GPU" in errors[0]


@requires_rtx
def test_runtime_options_belong_to_the_rtx_edition(tmp_path, demo_onnx):
    engine = engine_without_tensorrt(tmp_path / "m.engine", demo_onnx)  # built by "TensorRT 10.13"
    with pytest.raises(Exception, match="runtime_cache and cuda_graphs are TensorRT for RTX options"):
        load_runtime(engine, cuda_graphs=True)


@pytest.mark.tensorrt
@requires_tensorrt
def test_fp32_engine_matches_pytorch_over_the_whole_batch_range(demo_engines):
    x = np.random.default_rng(0).standard_normal((8, 8, 3, 32, 32), dtype=np.float32)
    with load_runtime(demo_model_dir(), "torch", device="cuda") as reference, load_runtime(demo_engines["fp32"].engine) as trt:
        assert trt.input_spec.batch_range == "1..8"
        for batch in range(1, 9):
            assert np.abs(trt.run(x[:batch]) - reference.run(x[:batch])).max() <= 1e-3
        with pytest.raises(ValueError, match="batch 9 is outside"):
            trt.run(np.zeros((9, 8, 3, 32, 32), np.float32))


@pytest.mark.tensorrt
@requires_tensorrt
def test_fp16_engine_classifies_every_sample_like_pytorch(demo_engines, sample_predictions):
    from vivit_deploy.predict import VideoClassifier

    with load_runtime(demo_engines["fp16"].engine) as trt:
        classifier = VideoClassifier(trt)
        assert all(classifier.classify(path, top_k=1)[0].label == sample_predictions[path.name]
                   for path, _ in sample_videos())


@pytest.mark.tensorrt
@requires_tensorrt
def test_torch_cuda_tensors_run_zero_copy(demo_engines):
    import torch

    with load_runtime(demo_engines["fp32"].engine) as trt:
        x = torch.randn(2, 8, 3, 32, 32, device=trt.device)
        out = trt.run_torch(x)
        assert out.is_cuda and out.dtype == torch.float32
        np.testing.assert_allclose(out.cpu().numpy(), trt.run(x.cpu().numpy()), atol=1e-5)


# ---- TensorRT for RTX on a GPU it targets (Ampere, Ada, Blackwell, Turing; not Hopper) ----------------------------

@pytest.fixture(scope="module")
def local_rtx_engines(tmp_path_factory, demo_onnx, demo_onnx_fp16):
    import torch

    from vivit_deploy.export.trt_build import build_engine

    major, minor = torch.cuda.get_device_capability(0)
    directory = tmp_path_factory.mktemp("rtx-local")
    return {p: build_engine(f, directory / f"demo-{p}.engine", trt="rtx", compute_capabilities=f"{major}.{minor}",
                            max_batch=8).engine for p, f in (("fp32", demo_onnx), ("fp16", demo_onnx_fp16))}


@pytest.mark.gpu
@requires_rtx_gpu
def test_rtx_fp32_engine_matches_pytorch_and_keeps_its_runtime_cache(local_rtx_engines):
    from vivit_deploy.runtimes.trt_runtime import runtime_cache_path

    x = np.random.default_rng(0).standard_normal((8, 8, 3, 32, 32), dtype=np.float32)
    engine = local_rtx_engines["fp32"]
    with load_runtime(demo_model_dir(), "torch", device="cuda") as reference, load_runtime(engine) as trt:
        for batch in (1, 3, 8):
            assert np.abs(trt.run(x[:batch]) - reference.run(x[:batch])).max() <= 1e-3
    assert runtime_cache_path(engine).stat().st_size > 0
    with load_runtime(engine, cuda_graphs=True) as trt:  # the second load reads the cache
        assert trt.describe()["cuda_graphs"] and trt.run(x[:2]).shape == (2, 4)


@pytest.mark.gpu
@requires_rtx_gpu
def test_rtx_fp16_engine_classifies_every_sample_like_pytorch(local_rtx_engines, sample_predictions):
    from vivit_deploy.predict import VideoClassifier

    with load_runtime(local_rtx_engines["fp16"]) as trt:
        classifier = VideoClassifier(trt)
        assert all(classifier.classify(path, top_k=1)[0].label == sample_predictions[path.name]
                   for path, _ in sample_videos())
