"""The TensorRT backend: refusals that need no GPU, and parity where TensorRT and a GPU exist."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import engine_without_tensorrt, requires_tensorrt, tensorrt_missing
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
def test_fp16_engine_classifies_every_sample_like_pytorch(demo_engines):
    from vivit_deploy.predict import VideoClassifier

    with load_runtime(demo_engines["fp16"].engine) as trt:
        classifier = VideoClassifier(trt)
        assert all(classifier.classify(path, top_k=1)[0].label == label for path, label in sample_videos())


@pytest.mark.tensorrt
@requires_tensorrt
def test_torch_cuda_tensors_run_zero_copy(demo_engines):
    import torch

    with load_runtime(demo_engines["fp32"].engine) as trt:
        x = torch.randn(2, 8, 3, 32, 32, device=trt.device)
        out = trt.run_torch(x)
        assert out.is_cuda and out.dtype == torch.float32
        np.testing.assert_allclose(out.cpu().numpy(), trt.run(x.cpu().numpy()), atol=1e-5)
