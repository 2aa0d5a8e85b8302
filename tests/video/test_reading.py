"""Frame sampling and decoding of real mp4 files written with PyAV, and every unreadable-file error."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import counting_video, frame_numbers
from vivit_deploy.errors import VideoReadError
from vivit_deploy.video.reading import count_frames, read_clips, read_video, sample_indices, write_video


def test_uniform_sampling_spreads_over_the_video():
    assert sample_indices(16, 8).tolist() == [[1, 3, 5, 7, 9, 11, 13, 15]]
    assert sample_indices(100, 4, num_clips=2).tolist() == [[6, 18, 31, 43], [56, 68, 81, 93]]


def test_stride_sampling_centre_window_and_several_clips():
    assert sample_indices(100, 4, sampling="stride", frame_sample_rate=2).tolist() == [[46, 48, 50, 52]]
    clips = sample_indices(100, 4, sampling="stride", frame_sample_rate=2, num_clips=3)
    assert clips.tolist() == [[0, 2, 4, 6], [46, 48, 50, 52], [92, 94, 96, 98]]


def test_short_videos_repeat_frames():
    assert sample_indices(3, 6).tolist() == [[0, 0, 1, 1, 2, 2]]
    assert sample_indices(5, 4, sampling="stride", frame_sample_rate=4).tolist() == [[0, 4, 4, 4]]


@pytest.mark.parametrize("kwargs", [dict(sampling="random"), dict(frame_sample_rate=0, sampling="stride"), dict(num_clips=0)])
def test_bad_sampling_arguments(kwargs):
    with pytest.raises(ValueError):
        sample_indices(10, 4, **kwargs)


def test_read_video_decodes_the_sampled_frames(tmp_path):
    path = counting_video(tmp_path / "count.mp4", frames=20)
    assert count_frames(path) == 20
    clip = read_video(path, 5)
    assert clip.dtype == np.uint8 and clip.shape == (5, 32, 48, 3)
    assert frame_numbers(clip) == sample_indices(20, 5)[0].tolist() == [2, 6, 10, 14, 18]


def test_read_clips_for_multi_clip_evaluation(tmp_path):
    path = counting_video(tmp_path / "count.mp4", frames=24)
    clips = read_clips(path, 3, num_clips=4, sampling="stride", frame_sample_rate=2)
    assert clips.shape == (4, 3, 32, 48, 3)
    assert [frame_numbers(c) for c in clips] == sample_indices(24, 3, sampling="stride", frame_sample_rate=2, num_clips=4).tolist()


def test_video_shorter_than_the_clip(tmp_path):
    path = counting_video(tmp_path / "short.mp4", frames=3)
    assert frame_numbers(read_video(path, 8)) == [0, 0, 0, 1, 1, 2, 2, 2]


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(VideoReadError, match="missing.mp4: no such file"):
        read_video(tmp_path / "missing.mp4", 4)
    with pytest.raises(VideoReadError, match="is a directory, not a video file"):
        read_video(tmp_path, 4)


def test_not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video")
    with pytest.raises(VideoReadError, match="notes.mp4: not a video FFmpeg can read"):
        read_video(path, 4)


def test_truncated_video(tmp_path):
    path = counting_video(tmp_path / "full.mp4", frames=20)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoReadError, match="cut.mp4"):
        read_video(cut, 4)


def test_audio_only_file_has_no_video_stream(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "audio.m4a"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(VideoReadError, match="audio only, no video stream"):
        read_video(path, 4)


def test_zero_frame_video(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "empty.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    with pytest.raises(VideoReadError, match="empty.mp4"):
        read_video(path, 4)


def test_write_video_refuses_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even frame size"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 31, 32, 3), np.uint8))


@pytest.mark.parametrize("bframes", [False, True], ids=["ip", "with-b-frames"])
def test_seeking_to_keyframes_gives_the_frames_of_a_front_to_back_decode(tmp_path, bframes):
    from vivit_deploy.video import decoding

    frames = 480
    levels = (np.arange(frames) * 7 % 250).astype(np.uint8)  # every frame different, so any mix-up shows
    texture = np.random.default_rng(0).integers(0, 128, (1, 32, 48, 3), dtype=np.uint8)
    clip = texture + levels[:, None, None, None] // 2
    path = write_video(tmp_path / "long.mp4", clip, fps=30, crf=12, keyint=24, bframes=bframes)
    for kwargs in (dict(num_clips=1, sampling="uniform"), dict(num_clips=3, sampling="uniform"),
                   dict(num_clips=4, sampling="stride", frame_sample_rate=3)):
        wanted = set(sample_indices(frames, 8, **kwargs).ravel().tolist())
        video = decoding.VideoFile(path)
        assert video._seeking(wanted, None, 2) is not None  # the seeking path ran, no fallback
        np.testing.assert_array_equal(read_clips(path, 8, seek=True, **kwargs), read_clips(path, 8, seek=False, **kwargs))


def test_dense_sampling_decodes_every_frame_it_needs(tmp_path):
    path = counting_video(tmp_path / "count.mp4", frames=20)
    assert frame_numbers(read_video(path, 5)) == [2, 6, 10, 14, 18]


def test_empty_file_is_named_as_such(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(VideoReadError, match="empty.mp4: empty file"):
        read_video(path, 4)
