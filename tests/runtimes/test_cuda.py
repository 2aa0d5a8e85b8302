"""The PyTorch backend (and ONNX Runtime's CUDA provider, where installed) on a CUDA GPU.

Marked ``gpu``: skipped with the reason where PyTorch sees no GPU. Run them with
``python -m pytest -m gpu -rs`` on a machine that has one.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import requires_gpu
from vivit_deploy.demo import demo_model_dir, sample_videos
from vivit_deploy.predict import VideoClassifier
from vivit_deploy.runtimes import load_runtime
from vivit_deploy.accuracy.tolerances import tolerance_for


pytestmark = [pytest.mark.gpu, requires_gpu]

FRAME_SHAPE = (8, 3, 32, 32)


@pytest.fixture(scope="module")
def inputs_and_reference():
    x = np.random.default_rng(0).standard_normal((6, *FRAME_SHAPE), dtype=np.float32)
    with load_runtime(demo_model_dir(), "torch", device="cpu") as cpu:
        return x, cpu.run(x)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_logits_match_cpu_fp32_within_the_precision_tolerance(inputs_and_reference, precision, attn):
    x, expected = inputs_and_reference
    tolerance = tolerance_for(precision)
    with load_runtime(demo_model_dir(), "torch", device="cuda", precision=precision, attn_implementation=attn) as rt:
        assert rt.device.startswith("cuda") and rt.precision == precision
        logits = rt.run(x)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, atol=tolerance.atol, rtol=tolerance.rtol)
    assert (logits.argmax(1) == expected.argmax(1)).mean() >= tolerance.min_top1


def test_classifier_on_cuda_gives_the_cpu_labels_for_every_sample_video():
    with VideoClassifier.from_pretrained(demo_model_dir(), device="cpu") as cpu, \
            VideoClassifier.from_pretrained(demo_model_dir(), device="cuda", precision="fp16") as gpu:
        for path, _ in sample_videos():
            top_cpu, top_gpu = cpu.classify(path, top_k=1)[0], gpu.classify(path, top_k=1)[0]
            assert top_gpu.label == top_cpu.label
            assert abs(top_gpu.probability - top_cpu.probability) < 1e-2


def test_onnxruntime_cuda_provider_matches_pytorch(demo_onnx, inputs_and_reference):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (onnxruntime-gpu with CUDA 13 and cuDNN 9 has one)")
    x, expected = inputs_and_reference
    with load_runtime(demo_onnx, device="cuda") as rt:
        assert rt.provider == "cuda"
        np.testing.assert_allclose(rt.run(x), expected, atol=tolerance_for("fp32").atol, rtol=tolerance_for("fp32").rtol)
