"""transformers' VivitImageProcessor tests (tests/models/vivit/test_image_processing_vivit.py), held for ours: every
input form it takes gives its output bit for bit, its interface reads the same."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from vivit_deploy.errors import ConfigError, InputShapeError
from vivit_deploy.video.image_processor import VivitImageProcessor

transformers = pytest.importorskip("transformers", reason="transformers (the reference) is not installed")
PIL = pytest.importorskip("PIL.Image")
torch = pytest.importorskip("torch")

# upstream's VivitImageProcessingTester
SETTINGS = dict(do_resize=True, size={"shortest_edge": 18}, do_normalize=True, image_mean=[0.5, 0.5, 0.5],
                image_std=[0.5, 0.5, 0.5], crop_size={"height": 18, "width": 18})
FRAMES = 10


def videos(batch=3, seed=0, equal=False):
    """Frames (C, H, W) uint8 of random sizes between 30 and 400, as upstream's prepare_video_inputs makes them."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batch):
        h, w = (64, 80) if equal else rng.integers(30, 400, 2)
        out.append([rng.integers(0, 256, (3, h, w), dtype=np.uint8) for _ in range(FRAMES)])
    return out


def as_pil(video):
    return [PIL.fromarray(np.moveaxis(f, 0, -1)) for f in video]


def as_numpy(video):
    return [np.moveaxis(f, 0, -1) for f in video]  # channels last, as upstream's numpify gives them


def as_torch(video):
    return [torch.from_numpy(f) for f in video]  # channels first


def both(**settings):
    return VivitImageProcessor(**{**SETTINGS, **settings}), transformers.VivitImageProcessor(**{**SETTINGS, **settings})


def theirs_array(reference, inputs, **kwargs):
    return reference(inputs, return_tensors="np", **kwargs).pixel_values


def test_properties_and_from_dict_with_kwargs():
    processor, _ = both()
    for name in ("image_mean", "image_std", "do_normalize", "do_resize", "do_center_crop", "size"):
        assert hasattr(processor, name)
    from_dict = VivitImageProcessor.from_dict(SETTINGS)
    assert from_dict.size == {"shortest_edge": 18} and from_dict.crop_size == {"height": 18, "width": 18}
    overridden = VivitImageProcessor.from_dict(SETTINGS, size=42, crop_size=84)
    assert overridden.size == {"shortest_edge": 42} and overridden.crop_size == {"height": 84, "width": 84}


def test_rescale_with_and_without_offset():
    image = np.arange(0, 256, 1, dtype=np.uint8).reshape(1, 8, 32)
    processor, reference = both()
    np.testing.assert_array_equal(processor.rescale(image, scale=1 / 127.5), reference.rescale(image, scale=1 / 127.5))
    np.testing.assert_array_equal(processor.rescale(image, scale=1 / 255, offset=False),
                                  reference.rescale(image, scale=1 / 255, offset=False))


@pytest.mark.parametrize("form", [as_pil, as_numpy, as_torch], ids=["pil", "numpy-channels-last", "torch-channels-first"])
def test_every_input_form_single_and_batched_equals_transformers_bit_for_bit(form):
    processor, reference = both()
    batch = [form(v) for v in videos()]
    single = processor(batch[0], return_tensors="pt").pixel_values
    assert tuple(single.shape) == (1, FRAMES, 3, 18, 18)
    np.testing.assert_array_equal(single.numpy(), theirs_array(reference, batch[0]))
    batched = processor(batch, return_tensors="np").pixel_values
    assert batched.shape == (3, FRAMES, 3, 18, 18)
    np.testing.assert_array_equal(batched, theirs_array(reference, batch))


def test_stacked_arrays_and_channel_order_given_explicitly():
    processor, reference = both()
    video = videos(equal=True)[0]
    expected = theirs_array(reference, as_numpy(video))
    np.testing.assert_array_equal(processor(np.stack(as_numpy(video))).pixel_values, expected)  # (T, H, W, 3)
    np.testing.assert_array_equal(processor(np.stack(video), input_data_format="channels_first").pixel_values, expected)
    np.testing.assert_array_equal(processor(torch.from_numpy(np.stack(video))).pixel_values, expected)  # (T, 3, H, W)


@pytest.mark.parametrize("kind", ["unit-floats", "level-floats"])
def test_float_frames_equal_transformers(kind):
    processor, reference = both()
    video = as_numpy(videos(batch=1, equal=True)[0])
    frames = [f.astype(np.float32) / 255 for f in video] if kind == "unit-floats" else [f.astype(np.float64) for f in video]
    with pytest.warns(UserWarning, match="rescaled again") if kind == "unit-floats" else contextlib.nullcontext():
        ours = processor(frames, return_tensors="np").pixel_values
    np.testing.assert_array_equal(ours, theirs_array(reference, frames))
    ours = processor(frames, return_tensors="np", do_resize=False, do_center_crop=False).pixel_values
    theirs = theirs_array(reference, frames, do_resize=False, do_center_crop=False)
    np.testing.assert_array_equal(ours, theirs.astype(np.float32))


@pytest.mark.parametrize("overrides", [dict(do_resize=False), dict(size={"shortest_edge": 24}), dict(size=30, crop_size=20),
                                       dict(do_normalize=False), dict(do_rescale=False, offset=False), dict(offset=False),
                                       dict(do_center_crop=False, size={"height": 20, "width": 26}),
                                       dict(image_mean=0.2, image_std=0.3), dict(resample=3)],
                         ids=lambda d: ",".join(d))
def test_per_call_overrides_equal_transformers(overrides):
    processor, reference = both()
    video = as_pil(videos(batch=1, equal=True)[0])
    np.testing.assert_array_equal(processor(video, return_tensors="np", **overrides).pixel_values,
                                  theirs_array(reference, video, **overrides).astype(np.float32))


def test_what_transformers_takes_and_ours_does_not_says_what_to_pass():
    processor, reference = both()
    video = [np.zeros((20, 20, 3), np.uint8)] * 2
    with pytest.raises(ValueError, match="offset"):  # refused by both: an offset needs the rescale
        reference(video, do_rescale=False)
    with pytest.raises(ConfigError, match="offset requires do_rescale"):
        processor(video, do_rescale=False)
    four = [np.zeros((4, 20, 20), np.uint8) for _ in range(2)]  # upstream's 4-channel test
    with pytest.raises(InputShapeError, match="frames have 4 channels; the preprocessor takes RGB"):
        processor(four, input_data_format="channels_first", image_mean=0, image_std=1)
    with pytest.raises(InputShapeError, match="give RGB frames \\(for a PIL image: image.convert\\('RGB'\\)\\)"):
        processor([PIL.fromarray(np.zeros((20, 20), np.uint8))])
    with pytest.raises(ConfigError, match="return_tensors 'tf'"):
        processor([np.zeros((20, 20, 3), np.uint8)], return_tensors="tf")


def test_the_preprocessor_imports_torch_only_when_handed_a_tensor():
    import subprocess
    import sys

    code = ("import sys, numpy as np\nfrom vivit_deploy import VideoPreprocessor\n"
            "VideoPreprocessor()([np.zeros((30, 40, 3), np.uint8)] * 2)\nprint('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_channels_last_output_equals_transformers():
    processor, reference = both()
    batch = [as_numpy(v) for v in videos()]
    ours = processor(batch, data_format="channels_last", return_tensors="np").pixel_values
    theirs = theirs_array(reference, batch, data_format="channels_last")
    assert ours.shape == theirs.shape == (3, FRAMES, 18, 18, 3)
    np.testing.assert_array_equal(ours, theirs)
    with pytest.raises(ConfigError, match="give 'channels_first'"):
        processor(batch, data_format="planar")
