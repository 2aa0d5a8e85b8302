"""Shared fixtures: tiny random checkpoints saved by transformers, and small mp4 files written with PyAV."""

from __future__ import annotations

import os
from pathlib import Path

# Every server, Ray node and client in the tests binds and connects on 127.0.0.1 only. Ray reads this
# when it is imported (a module constant), so it is set here, before any test module imports ray:
# with it, Ray uses the loopback address for the head, every node and the GCS.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reporting attempts from a machine without internet

import numpy as np
import pytest

TINY = dict(
    image_size=32, num_frames=4, tubelet_size=[2, 8, 8], hidden_size=32, num_hidden_layers=2,
    num_attention_heads=4, intermediate_size=64, num_labels=5,
)


def hf_checkpoint(directory: Path, *, base: bool = False, seed: int = 0, **overrides) -> Path:
    """Save a transformers ViViT with every parameter random (not just the default init) into ``directory``."""
    transformers = pytest.importorskip("transformers", reason="transformers (the parity reference) is not installed")
    import torch

    config = transformers.VivitConfig(**{**TINY, **overrides})
    cls = transformers.VivitModel if base else transformers.VivitForVideoClassification
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return hf_checkpoint(tmp_path_factory.mktemp("tiny-hf"))


@pytest.fixture(scope="session")
def tiny_base_checkpoint(tmp_path_factory) -> Path:
    return hf_checkpoint(tmp_path_factory.mktemp("tiny-hf-base"), base=True)


def transformers_saved(cls, config, directory: Path, **load_kwargs):
    """transformers' ``cls`` of ``config`` with random weights (normal, std 0.2: larger than its initialiser's, so every
    part shows in a parity test), saved to ``directory`` and read back by transformers (``load_kwargs``, e.g. eager
    attention for the attention maps): the reference the model files are checked against."""
    import torch

    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(directory)
    return cls.from_pretrained(directory, **load_kwargs).eval()


def assert_outputs_equal(mine, expected) -> None:
    """Our model's outputs against transformers': the logits and every hidden state within 1e-5, every attention map
    within 1e-6 (absolute; 1e-5 relative), and as many of each."""
    import torch

    torch.testing.assert_close(mine.logits, expected.logits, atol=1e-5, rtol=1e-5)
    assert len(mine.hidden_states) == len(expected.hidden_states)
    for a, b in zip(mine.hidden_states, expected.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert len(mine.attentions) == len(expected.attentions)
    for a, b in zip(mine.attentions, expected.attentions):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def random_clip(frames: int = 4, height: int = 40, width: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def counting_video(path: Path, frames: int, height: int = 32, width: int = 48) -> Path:
    """An mp4 whose frame i is a flat grey of level 10*i, so decoded frames can be identified."""
    from vivit_deploy.video.reading import write_video

    levels = (np.arange(frames) * 10 % 250).astype(np.uint8)
    video = np.broadcast_to(levels[:, None, None, None], (frames, height, width, 3)).copy()
    return write_video(path, video, fps=10, crf=0)


def frame_numbers(clip: np.ndarray) -> list[int]:
    """Invert counting_video: which frame each decoded frame was."""
    return [int(round(float(frame.mean()) / 10)) for frame in clip]


# ---- exported files, made once per session --------------------------------------------------------

@pytest.fixture(scope="session")
def demo_onnx(tmp_path_factory) -> Path:
    """The demo model exported to fp32 ONNX with the default settings."""
    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "demo.onnx"
    export_onnx(demo_model_dir(), path)
    return path


@pytest.fixture(scope="session")
def demo_onnx_fp16(tmp_path_factory) -> Path:
    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "demo-fp16.onnx"
    export_onnx(demo_model_dir(), path, precision="fp16")
    return path


# Models 2 and 3 at the demo model's geometry (8 frames of 32x32, tubelets 2x8x8) and labels, random weights: the
# runtime contract runs them beside the demo model. Model 2 with vit-pytorch's per-step positions; the stream tests
# make their own with the paper's separate ones.
FACTORISED = {
    "factorised_encoder": dict(num_hidden_layers=2, temporal_layers=1),
    "factorised_self_attention": dict(num_hidden_layers=2),
}


def factorised_checkpoint(directory: Path, variant: str, seed: int = 0, **overrides) -> Path:
    """A Model 2 or 3 checkpoint with every weight random (LayerNorms too), saved in our layout."""
    import torch

    from vivit_deploy.demo.motion import LABELS
    from vivit_deploy.model.config import VivitConfig
    from vivit_deploy.model.factorised import FactorisedVivitForVideoClassification
    from vivit_deploy.video.preprocessing import PreprocessorConfig, VideoPreprocessor

    config = VivitConfig(**{**dict(image_size=32, num_frames=8, tubelet_size=(2, 8, 8), hidden_size=32,
                                   num_attention_heads=4, intermediate_size=64, attention_head_dim=16, qkv_bias=False,
                                   hidden_act="gelu", layer_norm_eps=1e-5, id2label=dict(enumerate(LABELS)),
                                   variant=variant), **FACTORISED[variant], **overrides})
    torch.manual_seed(seed)
    model = FactorisedVivitForVideoClassification(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)  # LayerNorm gains around 1, as trained ones are
    model.save_pretrained(directory, preprocessor=VideoPreprocessor(PreprocessorConfig.for_input_size(32, 32)))
    return directory


@pytest.fixture(scope="session")
def factorised_checkpoints(tmp_path_factory) -> dict[str, Path]:
    return {variant: factorised_checkpoint(tmp_path_factory.mktemp(variant), variant) for variant in FACTORISED}


@pytest.fixture(scope="session")
def factorised_onnx(tmp_path_factory, factorised_checkpoints) -> dict[str, Path]:
    """Each of them exported to fp32 ONNX."""
    from vivit_deploy.export import export_onnx

    out = {}
    for variant, checkpoint in factorised_checkpoints.items():
        out[variant] = tmp_path_factory.mktemp("onnx") / f"{variant}.onnx"
        export_onnx(checkpoint, out[variant])
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_checkpoint) -> Path:
    """A tiny random transformers checkpoint (no preprocessor config) exported to fp32 ONNX."""
    from vivit_deploy.export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(tiny_checkpoint, path)
    return path


# ---- CUDA: tests marked gpu run where PyTorch sees a GPU and skip with the reason elsewhere ----------

def gpu_missing() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU: PyTorch sees none here"


requires_gpu = pytest.mark.skipif(gpu_missing() is not None, reason=str(gpu_missing()))


# ---- TensorRT: real engines where TensorRT and a GPU exist, a skip with the reason elsewhere ---------

def tensorrt_missing() -> str | None:
    """Why TensorRT 10/11 tests cannot run here, or None when they can."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt (TensorRT 10/11) is not installed (its wheels come from NVIDIA's index; see docs/tensorrt.md)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU: TensorRT engines need one"
    return None


requires_tensorrt = pytest.mark.skipif(tensorrt_missing() is not None, reason=str(tensorrt_missing()))


def rtx_missing() -> str | None:
    """Why TensorRT for RTX cannot build engines here (it needs no GPU to build), or None when it can."""
    import importlib.util

    if importlib.util.find_spec("tensorrt_rtx") is None:
        return "tensorrt_rtx is not installed: pip install -e '.[tensorrt-rtx]' (PyPI tensorrt-rtx-cu13)"
    return None


requires_rtx = pytest.mark.skipif(rtx_missing() is not None, reason=str(rtx_missing()))


def rtx_gpu_missing() -> str | None:
    """Why TensorRT for RTX engines cannot run here: no tensorrt_rtx, no GPU, or a GPU it does not target."""
    if rtx_missing():
        return rtx_missing()
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU: TensorRT for RTX engines run on one"
    from vivit_deploy.artifacts.engines import EDITIONS

    major, minor = torch.cuda.get_device_capability(0)
    if f"{major}.{minor}" not in EDITIONS["rtx"].targets:
        return f"this GPU (compute {major}.{minor}, {torch.cuda.get_device_name(0)}) is not a TensorRT for RTX target"
    return None


requires_rtx_gpu = pytest.mark.skipif(rtx_gpu_missing() is not None, reason=str(rtx_gpu_missing()))


def engine_without_tensorrt(path: Path, onnx_path: Path, *, precision: str = "fp32", profile: tuple[int, int, int] = (1, 1, 4),
                            gpu_name: str = "GPU", tensorrt_version: str = "10.13.0", edition: str = "tensorrt") -> Path:
    """A stand-in ``.engine`` with a real sidecar (from ``onnx_path``'s metadata): what the code that reads
    engines before TensorRT deserializes them sees, on machines without TensorRT."""
    import json

    from vivit_deploy.artifacts.engines import Profile, make_sidecar, sidecar_path
    from vivit_deploy.artifacts.metadata import read_onnx_metadata

    path.write_bytes(b"serialized engine")
    sidecar = make_sidecar(read_onnx_metadata(onnx_path), edition_name=edition, tensorrt_version=tensorrt_version,
                           gpu_name=gpu_name if edition == "tensorrt" else None,
                           compute_capability="9.0" if edition == "tensorrt" else None,
                           targets=() if edition == "tensorrt" else ("8.6", "8.9"), precision=precision,
                           profile=Profile(*profile), onnx_sha256="0" * 64, build={})
    sidecar_path(path).write_text(json.dumps(sidecar))
    return path


@pytest.fixture(scope="session")
def demo_engines(tmp_path_factory, demo_onnx, demo_onnx_fp16) -> dict:
    """fp32 and fp16 engines of the demo model, batch 1..8, sharing one timing cache."""
    reason = tensorrt_missing()
    if reason:
        pytest.skip(reason)
    from vivit_deploy.export.trt_build import build_engine

    directory = tmp_path_factory.mktemp("engines")
    cache = directory / "timing.cache"
    return {
        "fp32": build_engine(demo_onnx, directory / "demo-fp32.engine", trt="tensorrt", max_batch=8, timing_cache=cache),
        "fp16": build_engine(demo_onnx_fp16, directory / "demo-fp16.engine", trt="tensorrt", max_batch=8, timing_cache=cache),
        "cache": cache,
    }


@pytest.fixture(scope="session")
def demo_onnx_fp8(tmp_path_factory) -> Path:
    """The demo model as an fp8 (e4m3fn) Q/DQ file, calibrated on the bundled sample videos."""
    from vivit_deploy.demo import SAMPLES, demo_model_dir
    from vivit_deploy.export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "demo-fp8.onnx"
    export_onnx(demo_model_dir(), path, precision="fp8", calibration=SAMPLES)
    return path


@pytest.fixture(scope="session")
def demo_rtx_engines(tmp_path_factory, demo_onnx, demo_onnx_fp16, demo_onnx_int8, demo_onnx_fp8) -> dict:
    """The demo model in every precision, built by TensorRT for RTX ahead of time (no GPU needed) for the
    default targets (fp8: those with fp8), batch 1..8: precision -> BuildReport."""
    reason = rtx_missing()
    if reason:
        pytest.skip(reason)
    from vivit_deploy.export.trt_build import build_engine

    directory = tmp_path_factory.mktemp("rtx-engines")
    files = {"fp32": demo_onnx, "fp16": demo_onnx_fp16, "int8": demo_onnx_int8, "fp8": demo_onnx_fp8}
    return {p: build_engine(f, directory / f"demo-{p}.engine", trt="rtx", max_batch=8) for p, f in files.items()}


@pytest.fixture(scope="session")
def demo_onnx_int8(tmp_path_factory) -> Path:
    """The demo model as an int8 Q/DQ file, calibrated on the bundled sample videos."""
    from vivit_deploy.demo import SAMPLES, demo_model_dir
    from vivit_deploy.export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "demo-int8.onnx"
    export_onnx(demo_model_dir(), path, precision="int8", calibration=SAMPLES)
    return path


@pytest.fixture(scope="session")
def sample_predictions() -> dict:
    """The demo model's top-1 label for each shipped sample video in PyTorch fp32: what every backend must reproduce.
    The task is hard on purpose, so the model gets most, not all, of them right (training.json says how many)."""
    from vivit_deploy.demo import demo_model_dir, sample_videos
    from vivit_deploy.predict import VideoClassifier

    classifier = VideoClassifier.from_pretrained(demo_model_dir(), backend="torch")
    return {path.name: classifier.classify(path, top_k=1)[0].label for path, _ in sample_videos()}
