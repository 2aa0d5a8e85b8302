"""Preprocessor parity with transformers' VivitImageProcessor, input checks, and config handling."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import random_clip
from vivit_deploy.errors import ConfigError, InputShapeError
from vivit_deploy.video.preprocessing import PreprocessorConfig, VideoPreprocessor
from vivit_deploy.video.resample import horizontal_pass_first

PARITY = 1e-5  # max abs difference allowed against transformers (measured: 0)


def _reference(clip: np.ndarray, **kwargs) -> np.ndarray:
    transformers = pytest.importorskip("transformers", reason="transformers (the parity reference) is not installed")
    pytest.importorskip("PIL")
    processor = transformers.VivitImageProcessor(**kwargs)
    return np.asarray(processor(list(clip), return_tensors="np")["pixel_values"])


CASES = {
    "default": {},
    "no-normalize": {"do_normalize": False},
    "height-width-no-crop": {"size": {"height": 40, "width": 56}, "do_center_crop": False},
    "imagenet-stats-no-offset": {"offset": False, "rescale_factor": 1 / 255, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
    "no-rescale": {"do_rescale": False, "offset": False},
    "no-resize": {"do_resize": False, "crop_size": {"height": 32, "width": 32}},
    "crop-larger-than-image": {"size": {"shortest_edge": 24}, "crop_size": {"height": 40, "width": 28}},
    "nearest": {"resample": 0}, "lanczos": {"resample": 1}, "bicubic": {"resample": 3},
    "box": {"resample": 4}, "hamming": {"resample": 5},
    "vertical-pass-first": {"size": {"height": 12, "width": 80}, "resample": 3, "do_center_crop": False},
}


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
def test_parity_with_transformers(kwargs):
    clip = random_clip(frames=3, height=60, width=84, seed=1)
    ours = VideoPreprocessor(**kwargs)(clip)
    expected = _reference(clip, **kwargs)
    assert ours.shape == expected.shape
    assert ours.dtype == np.float32 and ours.flags["C_CONTIGUOUS"]
    assert float(np.abs(ours - expected).max()) <= PARITY


def test_parity_on_a_camera_sized_clip():
    clip = random_clip(frames=2, height=480, width=640, seed=2)
    assert float(np.abs(VideoPreprocessor()(clip) - _reference(clip)).max()) <= PARITY


def test_portrait_clip():
    clip = random_clip(frames=2, height=100, width=60, seed=3)
    assert float(np.abs(VideoPreprocessor()(clip) - _reference(clip)).max()) <= PARITY


def test_pillow_pass_order_rule():
    # Pillow 13: vertical first when the height shrinks by more than twice as many pixels as the width.
    assert horizontal_pass_first((480, 640), (256, 341), "13.0.0")
    assert not horizontal_pass_first((100, 90), (60, 500), "13.0.0")
    assert horizontal_pass_first((100, 90), (60, 500), "12.1.0")


def test_batch_forms_agree():
    a, b = random_clip(seed=4), random_clip(seed=5)
    pre = VideoPreprocessor()
    single = np.concatenate([pre(a), pre(b)])
    assert np.array_equal(pre(np.stack([a, b])), single)
    assert np.array_equal(pre([a, b]), single)
    assert single.shape == (2, 4, 3, 224, 224)


def test_clips_of_different_sizes_with_a_crop():
    out = VideoPreprocessor()([random_clip(height=40, width=48), random_clip(height=64, width=50)])
    assert out.shape == (2, 4, 3, 224, 224)


@pytest.mark.parametrize(
    "videos, message",
    [
        (np.full((2, 8, 8, 3), 1.5, np.float32), r"float frames hold values outside \[0, 1\]"),
        (np.full((2, 8, 8, 3), 300, np.int32), r"values outside \[0, 255\]"),
        (random_clip()[..., :1], "frames have 1 channels; the preprocessor takes RGB"),
        (np.zeros((2, 8, 8, 4), np.uint8), "cannot tell where the channels are"),
        (random_clip()[0, :, :, 0], "got an array of shape \\(40, 48\\)"),
        ([], "empty list"),
        ("clip.mp4", "expected frames as numpy arrays, torch tensors or PIL images"),
        ([random_clip(frames=4), random_clip(frames=5)], "same number of frames"),
        (np.zeros((0, 8, 8, 3), np.uint8), "no frames"),
    ],
)
def test_bad_input_is_refused_clearly(videos, message):
    with pytest.raises(InputShapeError, match=message):
        VideoPreprocessor()(videos)


def test_clips_that_would_give_different_sizes_are_refused():
    pre = VideoPreprocessor(do_center_crop=False)
    with pytest.raises(InputShapeError, match="different sizes"):
        pre([random_clip(height=40, width=48), random_clip(height=40, width=80)])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"size": {"longest_edge": 5}}, "size must have the keys"),
        ({"crop_size": {"shortest_edge": 5}}, "crop_size must have the keys"),
        ({"resample": 9}, "resample must be a PIL resampling filter"),
        ({"do_rescale": False}, "offset requires do_rescale"),
        ({"image_mean": [0.5, 0.5]}, "image_mean must have 1 or 3 values"),
        ({"image_std": [0.5, 0.0, 0.5]}, "image_std must not contain 0"),
        ({"size": -3}, "size\\['shortest_edge'\\] must be a positive integer"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        PreprocessorConfig(**overrides)


def test_every_transformers_field_is_read_and_written(tmp_path):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.VivitImageProcessor(size={"height": 40, "width": 50}, do_normalize=False, resample=3)
    theirs.save_pretrained(tmp_path)
    ours = VideoPreprocessor.from_pretrained(tmp_path)
    assert ours.config.size == {"height": 40, "width": 50} and ours.config.resample == 3 and not ours.config.do_normalize
    ours.save_pretrained(tmp_path / "again")
    reread = transformers.VivitImageProcessor.from_pretrained(tmp_path / "again")
    clip = random_clip(seed=6)
    assert float(np.abs(ours(clip) - np.asarray(reread(list(clip), return_tensors="np")["pixel_values"])).max()) <= PARITY


def test_unreadable_config_file(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        VideoPreprocessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{")
    with pytest.raises(ConfigError, match="not a readable JSON"):
        VideoPreprocessor.from_pretrained(tmp_path)


def test_importing_and_running_the_preprocessor_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "from vivit_deploy import VideoPreprocessor\n"
        "VideoPreprocessor()(np.zeros((2, 40, 50, 3), np.uint8))\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_config_json_keeps_unknown_keys(tmp_path):
    data = {**PreprocessorConfig().to_dict(), "processor_class": "X"}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(data))
    assert VideoPreprocessor.from_pretrained(tmp_path).config.to_dict() == data


# ---- every processor file transformers writes, read with its own meaning ---------------------------------------------

VIDEOMAE_FILES = {  # what VideoMAE checkpoints carry: the class's defaults, and MCG-NJU's explicit ImageNet statistics
    "defaults": {},
    "mcg-nju": {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 2,
                "size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}},
    "small": {"size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32}, "do_normalize": False},
}


@pytest.mark.parametrize("settings", VIDEOMAE_FILES.values(), ids=VIDEOMAE_FILES.keys())
def test_a_videomae_processor_file_gives_transformers_pixel_values(settings, tmp_path):
    """VideoMAE's processor (TimeSformer's checkpoints use it too) has no offset and rescales by 1/255: read as
    ViViT's, its values came out shifted by 2.0. Now its file's fields keep their meaning, and the pixel values are
    transformers' Pillow processor's."""
    transformers = pytest.importorskip("transformers", reason="transformers (the parity reference) is not installed")
    from vivit_deploy.video.preprocessing import preprocessor_config_in

    theirs = transformers.VideoMAEImageProcessorPil(**settings)
    theirs.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert written["image_processor_type"].startswith("VideoMAEImageProcessor") and "offset" not in written
    config = preprocessor_config_in(tmp_path)
    assert config.processor_type.startswith("VideoMAEImageProcessor") and not config.offset
    clip = random_clip(frames=3, height=60, width=84, seed=4)
    ours = VideoPreprocessor(config)(clip)
    expected = np.asarray(theirs(list(clip), return_tensors="np")["pixel_values"])
    assert ours.shape == expected.shape and float(np.abs(ours - expected).max()) <= PARITY
    again = PreprocessorConfig.from_dict(config.to_dict())  # written back with its type, read back the same
    assert again == config and again.to_dict()["image_processor_type"] == config.processor_type


def test_a_processor_file_of_an_unknown_class_is_refused_in_one_line(tmp_path):
    from vivit_deploy.video.preprocessing import preprocessor_config_in

    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "SiglipImageProcessor"}))
    with pytest.raises(ConfigError, match="'SiglipImageProcessor' is not a processor vivit_deploy reads"):
        preprocessor_config_in(tmp_path)
    with pytest.raises(ConfigError, match="has no offset step"):
        PreprocessorConfig.from_dict({"image_processor_type": "VideoMAEImageProcessor", "offset": True})
    vivit = PreprocessorConfig.from_dict({"size": {"shortest_edge": 40}})  # no type: ViViT's, as files written before
    assert vivit.processor_type == "VivitImageProcessor" and vivit.offset and vivit.rescale_factor == 1 / 127.5


# transformers 5's video processors write video_preprocessor_config.json (keys as BaseVideoProcessor.to_dict writes them)
VIDEO_FILES = {
    "VivitVideoProcessor": ("VivitImageProcessor", {}),
    "VideoMAEVideoProcessor": ("VideoMAEImageProcessorPil", {}),
    "TimesformerVideoProcessor": ("VideoMAEImageProcessorPil", {"image_mean": [0.485, 0.456, 0.406],
                                                                "image_std": [0.229, 0.224, 0.225]}),
    "VJEPA2VideoProcessor": ("VideoMAEImageProcessorPil", {"image_mean": [0.485, 0.456, 0.406],
                                                           "image_std": [0.229, 0.224, 0.225]}),
}


def test_vjepa2s_video_processor_resizes_by_its_crop_whatever_its_file_says(tmp_path):
    """V-JEPA 2's video processor computes its resize from the crop (x 256 / 224) when it is built, so a file's own
    ``size`` is not what it uses: ours reads the same numbers as transformers' class loaded from the same file."""
    pytest.importorskip("transformers", reason="transformers (the parity reference) is not installed")
    from transformers.models.vjepa2.video_processing_vjepa2 import VJEPA2VideoProcessor

    from vivit_deploy.video.preprocessing import preprocessor_config_in

    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(
        {"video_processor_type": "VJEPA2VideoProcessor", "crop_size": {"height": 64, "width": 64},
         "size": {"shortest_edge": 100}}))
    theirs = VJEPA2VideoProcessor.from_pretrained(tmp_path)
    ours = preprocessor_config_in(tmp_path)
    assert ours.size == {"shortest_edge": theirs.size["shortest_edge"]} == {"shortest_edge": 73}
    assert ours.crop_size == {"height": 64, "width": 64} and ours.rescale_factor == pytest.approx(1 / 255)
    assert ours.image_mean == pytest.approx(tuple(theirs.image_mean)) and not ours.offset
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(
        {"video_processor_type": "VJEPA2VideoProcessor", "crop_size": {"width": 64}}))
    with pytest.raises(ConfigError, match="crop_size must be a positive integer or have a 'height'"):
        preprocessor_config_in(tmp_path)


@pytest.mark.parametrize("video_processor", VIDEO_FILES, ids=VIDEO_FILES)
def test_a_checkpoint_with_only_a_video_processor_file_is_read_with_that_processors_meaning(video_processor, tmp_path):
    """transformers 5 writes video_preprocessor_config.json; a checkpoint that carries only that file was refused ("no
    preprocessor config"). Its fields now mean what its class means: ViViT's always subtracts 1 after rescaling,
    VideoMAE's and TimeSformer's rescale by 1/255 (TimeSformer's with ImageNet's statistics). The pixel values are the
    image processor's of the same steps (Pillow's resize); the video processors resize with torchvision, which is not
    installable beside torch's CPU build here (docs/transformers.md)."""
    transformers = pytest.importorskip("transformers", reason="transformers (the parity reference) is not installed")
    from vivit_deploy.video.preprocessing import preprocessor_config_in

    written = {"video_processor_type": video_processor, "do_resize": True, "size": {"shortest_edge": 36},
               "crop_size": {"height": 32, "width": 32}, "do_center_crop": True, "do_rescale": True, "resample": 2,
               "do_normalize": True, "do_convert_rgb": True, "do_sample_frames": False, "default_to_square": False,
               "fps": None, "num_frames": None, "return_metadata": False, "video_metadata": None}
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(written))
    config = preprocessor_config_in(tmp_path)
    image_class, statistics = VIDEO_FILES[video_processor]
    reference = getattr(transformers, image_class)(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                                   **statistics)
    clip = random_clip(frames=2, height=60, width=84, seed=5)
    ours = VideoPreprocessor(config)(clip)
    expected = np.asarray(reference(list(clip), return_tensors="np")["pixel_values"])
    assert float(np.abs(ours - expected).max()) <= PARITY
    assert config.extra["do_sample_frames"] is False  # the video processor's own keys are kept
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({**written, "video_processor_type": "Qwen2VL"}))
    with pytest.raises(ConfigError, match="'Qwen2VL' is not a processor vivit_deploy reads"):
        preprocessor_config_in(tmp_path)
