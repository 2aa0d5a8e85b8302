"""One contract, every backend present: same logits, same validation, same lifecycle, safe under threads."""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.conftest import requires_tensorrt
from vivit_deploy.demo import demo_model_dir
from vivit_deploy.errors import InputShapeError
from vivit_deploy.predict import VideoClassifier
from vivit_deploy.runtimes import BACKENDS, Runtime, RuntimeClosedError, load_runtime
from vivit_deploy.accuracy.tolerances import tolerance_for

FRAME_SHAPE = (8, 3, 32, 32)  # the demo model's (T, C, H, W)


def _requires(module: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} is not installed")


BACKEND_PARAMS = [
    pytest.param("torch", id="torch"),
    pytest.param("onnxruntime", id="onnxruntime", marks=_requires("onnxruntime")),
    pytest.param("openvino", id="openvino", marks=_requires("openvino")),
    pytest.param("tensorrt", id="tensorrt", marks=[pytest.mark.tensorrt, requires_tensorrt]),
]


MODELS = ["demo", "factorised_encoder", "factorised_self_attention"]  # Model 1 (trained), Models 2 and 3 (random)


def _target(request, backend: str, model: str):
    if backend == "tensorrt":
        return request.getfixturevalue("demo_engines")["fp32"].engine, "auto"
    if model == "demo":
        return {"torch": demo_model_dir()}.get(backend) or request.getfixturevalue("demo_onnx"), "cpu"
    if backend == "torch":
        return request.getfixturevalue("factorised_checkpoints")[model], "cpu"
    return request.getfixturevalue("factorised_onnx")[model], "cpu"


@pytest.fixture(params=[pytest.param((b.values[0], m), id=f"{b.id}-{m}", marks=b.marks) for b in BACKEND_PARAMS
                        for m in MODELS if m == "demo" or b.values[0] != "tensorrt"])
def subject(request):
    """(runtime, model): every backend on the demo model, and the CPU backends on Models 2 and 3 too."""
    backend, model = request.param
    target, device = _target(request, backend, model)
    with load_runtime(target, backend, device=device) as rt:
        assert rt.backend == backend
        yield rt, model


@pytest.fixture
def runtime(subject) -> Runtime:
    return subject[0]


@pytest.fixture(params=BACKEND_PARAMS)
def demo_runtime(request) -> Runtime:
    """The trained demo model on every backend, for what needs its labels and accuracy."""
    target, device = _target(request, request.param, "demo")
    with load_runtime(target, request.param, device=device) as rt:
        yield rt


@pytest.fixture
def reference_logits(subject, request):
    """Clips and the PyTorch fp32 logits of the model under test."""
    model = subject[1]
    x = np.random.default_rng(0).standard_normal((5, *FRAME_SHAPE), dtype=np.float32)
    source = demo_model_dir() if model == "demo" else request.getfixturevalue("factorised_checkpoints")[model]
    with load_runtime(source, "torch", device="cpu") as reference:
        return x, reference.run(x)


def test_every_backend_is_registered():
    assert {"torch", "onnxruntime", "openvino", "tensorrt"} <= set(BACKENDS)


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_says_what_it_is_without_loading_anything(name):
    """What compare's matrix, bench's plan, the corpus job and serving ask a backend's class (docs/predict.md): each
    answer well formed, for every registered backend, whether or not its library is installed here."""
    cls = BACKENDS[name]
    assert cls.backend == name and cls.title and cls.artifact in ("checkpoint", "onnx", "engine", "url")
    assert cls.precisions and set(cls.timed_precisions or cls.precisions) <= set(cls.precisions)
    for device in ("cpu", "cuda"):
        why = cls.unavailable(device)
        assert why is None or (isinstance(why, str) and why and "\n" not in why)
        variants, skipped = cls.compare_variants(device)
        assert all(p in cls.precisions for _, p, _ in variants) and all(isinstance(r, str) for r in skipped.values())
    assert "runs" in cls.unavailable("cpu", "int4")  # a precision it does not offer says which it does
    for precision in cls.precisions:
        assert cls.file_precision(precision) and cls.reported_precision(None, None)
        assert cls.load_precision(precision) in (None, *cls.precisions, "fp32", "bf16")
    assert all(isinstance(v, str) for v in cls.library_versions().values())


def test_with_probes_opens_the_same_file_and_precision_with_its_hidden_states(demo_onnx):
    from vivit_deploy.runtimes.base import Runtime

    x = np.random.default_rng(0).standard_normal((2, *FRAME_SHAPE), dtype=np.float32)
    backends = [("onnxruntime", demo_onnx, {}), ("torch", demo_model_dir(), {"device": "cpu"})]
    if importlib.util.find_spec("openvino") is not None:
        backends.append(("openvino", demo_onnx, {}))
    for name, target, options in backends:
        with load_runtime(target, name, **options) as plain:
            probed = plain.with_probes()
            assert isinstance(probed, Runtime) and probed.probe_names and not plain.probe_names
            assert (probed.backend, probed.precision, probed.source) == (plain.backend, plain.precision, plain.source)
            logits, hidden = probed.run_probes(x)
            np.testing.assert_allclose(logits, plain.run(x), atol=1e-5)
            assert set(hidden) == set(probed.probe_names)
            probed.close()
            import torch

            np.testing.assert_array_equal(plain.run_torch(torch.from_numpy(x)).numpy(), plain.run(x))


def test_run_returns_float32_logits_close_to_the_reference(runtime, reference_logits):
    x, expected = reference_logits
    for batch in (1, 2, 5):
        logits = runtime.run(x[:batch])
        assert logits.dtype == np.float32 and logits.shape == (batch, 4)
        tolerance = tolerance_for(runtime.precision)
        np.testing.assert_allclose(logits, expected[:batch], atol=tolerance.atol, rtol=tolerance.rtol)


def test_labels_and_preprocessing_come_with_the_runtime(runtime):  # the models under test carry the demo's labels
    assert runtime.id2label == {0: "moving left", 1: "moving right", 2: "moving up", 3: "moving down"}
    assert runtime.preprocessor.crop_size == {"height": 32, "width": 32}
    assert runtime.input_spec.frame_shape == FRAME_SHAPE
    assert {"backend", "device", "precision", "batch", "source"} <= set(runtime.describe())


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: np.zeros((1, *FRAME_SHAPE), np.float64), "must be float32, got float64"),
        (lambda: np.zeros((1, *FRAME_SHAPE), np.uint8), "run the clips through VideoPreprocessor"),
        (lambda: np.zeros(FRAME_SHAPE, np.float32), "must have 5 dimensions"),
        (lambda: np.zeros((1, 16, 3, 32, 32), np.float32), r"frames 16 \(expected 8\)"),
        (lambda: np.zeros((1, 8, 3, 32, 48), np.float32), r"width 48 \(expected 32\)"),
        (lambda: np.zeros((0, *FRAME_SHAPE), np.float32), "batch 0 is outside"),
        (lambda: [[0.0]], "must be a numpy array"),
    ],
)
def test_bad_input_is_refused_before_the_backend_runs(runtime, make, match):
    with pytest.raises(InputShapeError, match=match):
        runtime.run(make())


def test_batch_above_the_exported_limit_is_refused(demo_onnx):
    with load_runtime(demo_onnx) as runtime:
        assert runtime.input_spec.max_batch == 32
        with pytest.raises(InputShapeError, match=r"batch 33 is outside the range this model takes \(1..32\)"):
            runtime.run(np.zeros((33, *FRAME_SHAPE), np.float32))


def test_non_contiguous_input_gives_the_same_logits(runtime, reference_logits):
    x, expected = reference_logits
    strided = np.asfortranarray(x[:2])
    assert not strided.flags.c_contiguous
    np.testing.assert_allclose(runtime.run(strided), expected[:2], atol=1e-4)


def test_concurrent_runs_match_serial_runs(runtime):
    inputs = [np.random.default_rng(i).standard_normal((2, *FRAME_SHAPE), dtype=np.float32) for i in range(8)]
    serial = [runtime.run(x) for x in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(runtime.run, inputs))
    for a, b in zip(serial, concurrent):
        np.testing.assert_array_equal(a, b)


def test_closed_runtime_refuses_to_run(runtime):
    runtime.close()
    runtime.close()  # idempotent
    assert runtime.closed
    with pytest.raises(RuntimeClosedError, match="is closed"):
        runtime.run(np.zeros((1, *FRAME_SHAPE), np.float32))


def test_video_classifier_on_every_backend_gets_the_samples_as_pytorch_does(demo_runtime, sample_predictions):
    from vivit_deploy.demo import sample_videos

    classifier = VideoClassifier(demo_runtime)
    for path, _ in sample_videos():
        assert classifier.classify(path, top_k=1)[0].label == sample_predictions[path.name], path.name
