"""Every kind of file a user has: read by a stated rule, or refused with one line that says why, quickly."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import warnings

import numpy as np
import pytest

from tests.video.conftest import FFMPEG, encode, h264, requires_ffmpeg
from vivit_deploy.errors import DamagedVideoWarning, VideoReadError
from vivit_deploy.video.decoding import VideoFile, display_transform
from vivit_deploy.video.opening import ReadOptions
from vivit_deploy.video.preprocessing import VideoPreprocessor
from vivit_deploy.video.reading import decode_clips, probe, read_clips, read_video, sample_indices

READABLE = ["plain", "rotate-90", "rotate-270", "rotate-180", "10-bit", "hdr-hevc", "vfr", "interlaced", "odd-size", "gray", "alpha", "alpha-vp9",
            "b-frames", "size-change", "latin-1-metadata", "zeroed-block", "truncated"]


def ffmpeg_frames(path, height, width) -> np.ndarray:
    """Every frame as ffmpeg's command line gives it (it applies the display matrix and scales size changes)."""
    raw = subprocess.run([FFMPEG, "-loglevel", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True, timeout=60).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


@pytest.mark.parametrize("name", READABLE)
def test_every_readable_kind_reads_the_same_whatever_the_threads_or_seeking(odd, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedVideoWarning)
        reference = read_clips(odd[name], 8, num_clips=2, sampling="uniform", threads=1, seek=False)
        for threads in (0, 2):
            np.testing.assert_array_equal(read_clips(odd[name], 8, num_clips=2, sampling="uniform", threads=threads),
                                          reference)
    assert reference.dtype == np.uint8 and reference.shape[-1] == 3


@pytest.mark.parametrize("name", READABLE)
def test_frames_preprocessed_as_they_are_decoded_equal_the_preprocessed_clip(odd, name):
    """The fused path (memory that follows the output) computes what the preprocessor computes on the raw clip."""
    pre = VideoPreprocessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 36})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedVideoWarning)
        raw = read_clips(odd[name], 8, num_clips=2, sampling="uniform")
        fused = read_clips(odd[name], 8, num_clips=2, sampling="uniform", transform=pre.frame)
    np.testing.assert_array_equal(fused, pre(raw.reshape(-1, *raw.shape[2:])).reshape(fused.shape))


# PyAV's rotation is counter-clockwise (the display matrix's own sense): a phone's 90 is turned back a quarter
# counter-clockwise by ffmpeg ("cclock"), its 270 a quarter clockwise
@pytest.mark.parametrize("name, turn, corner", [("rotate-90", "cclock", ("bottom", "left")),
                                                ("rotate-270", "clock", ("top", "right")),
                                                ("rotate-180", "hflip,vflip", ("bottom", "right"))])
def test_phone_rotation_is_applied_as_ffmpeg_applies_it(odd, name, turn, corner):
    """The display matrix names the turn (as ffmpeg's command line chooses it); --no-autorotate keeps frames as stored."""
    import av

    video = VideoFile(odd[name])
    with av.open(str(odd[name])) as container:
        assert display_transform(next(container.decode(video=0)).rotation) == turn
    upright = read_video(odd[name], 4)
    stored = read_video(odd[name], 4, options=ReadOptions(autorotate=False))
    assert stored.shape[1:3] == (video.height, video.width)
    rows, cols = np.nonzero(upright[0, :, :, 0] == 255)  # the white marker, stored at the top left
    quarter = "top" if rows.mean() < upright.shape[1] / 2 else "bottom"
    side = "left" if cols.mean() < upright.shape[2] / 2 else "right"
    assert (quarter, side) == corner


@requires_ffmpeg
@pytest.mark.parametrize("name", ["rotate-90", "rotate-270", "rotate-180"])
def test_rotated_frames_equal_what_ffmpeg_shows(odd, name):
    ours = read_video(odd[name], 20, sampling="stride", frame_sample_rate=1)  # every frame, in order
    theirs = ffmpeg_frames(odd[name], *ours.shape[1:3])
    assert theirs.shape == ours.shape
    # a different FFmpeg (Debian's) converts YUV to RGB with its own rounding: the pixels agree to a level or two
    assert np.abs(theirs.astype(int) - ours).mean() < 1.5


@requires_ffmpeg
def test_a_resolution_change_is_scaled_to_the_first_size_as_ffmpeg_does(odd):
    ours = read_video(odd["size-change"], 20, sampling="stride", frame_sample_rate=1)
    assert ours.shape == (20, 48, 64, 3)  # the second half was 64x96: brought to the first frames' size
    theirs = ffmpeg_frames(odd["size-change"], 48, 64)
    assert theirs.shape == ours.shape
    assert np.abs(theirs[:10].astype(int) - ours[:10]).mean() < 1.5  # the first half is the same picture
    assert np.abs(theirs[10:].astype(int) - ours[10:]).mean() < 6  # scaled by another scaler chain (bicubic both)


def test_ten_bit_hdr_gray_alpha_and_odd_sizes_read_as_8_bit_rgb(odd):
    assert read_video(odd["odd-size"], 4).shape == (4, 47, 65, 3)
    gray = read_video(odd["gray"], 4)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    for name in ("10-bit", "hdr-hevc", "alpha", "alpha-vp9", "interlaced"):
        clip = read_video(odd[name], 4)
        assert clip.shape == (4, 48, 64, 3) and clip.dtype == np.uint8
        assert clip[0, :6, :8].min() > 200  # the white marker survives the conversion


def test_variable_frame_rate_timeline_follows_the_timestamps(odd):
    info = probe(odd["vfr"])
    steps = np.diff(info.times)
    np.testing.assert_allclose(steps[:9], 0.05, atol=1e-3)
    np.testing.assert_allclose(steps[9:], 0.2, atol=1e-3)


def test_latin_1_metadata_never_stops_a_read(odd):
    assert read_video(odd["latin-1-metadata"], 4).shape == (4, 48, 64, 3)


def test_a_damaged_file_is_read_best_effort_and_says_how_many_frames_were_replaced(odd):
    with pytest.warns(DamagedVideoWarning, match=r"of 32 sampled frames could not be decoded \(damaged\)"):
        clip = read_video(odd["zeroed-block"], 32)
    result = decode_clips(odd["zeroed-block"], 32, num_clips=1, sampling="uniform")
    assert 0 < result.replaced < 32
    np.testing.assert_array_equal(result.array[0], clip)
    clean = read_video(odd["b-frames"], 32)
    differs = [i for i in range(32) if not np.array_equal(clip[i], clean[i])]
    assert differs and len(differs) == result.replaced  # only the replaced frames differ from the undamaged file
    every = read_video(odd["b-frames"], 120, sampling="stride", frame_sample_rate=1)
    sampled = sample_indices(120, 32)[0]
    for i in differs:  # each replaced frame is an earlier frame of the video (the nearest decodable one before)
        assert any(np.array_equal(clip[i], every[m]) for m in range(sampled[i]))


def test_a_file_cut_short_is_read_from_the_frames_it_holds(odd):
    with pytest.warns(DamagedVideoWarning, match=r"truncated at frame \d+ of 120"):
        clip = read_video(odd["truncated"], 8)
    assert clip.shape == (8, 48, 64, 3)


UNREADABLE = {
    "truncated-no-index": "not a video FFmpeg can read",
    "unknown-codec": "no decoder for codec 'XYZ1'",
}


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_kinds_are_one_line_errors(odd, name):
    with pytest.raises(VideoReadError, match=UNREADABLE[name]) as error:
        read_video(odd[name], 4)
    assert str(odd[name]) in str(error.value) and "\n" not in str(error.value)


def test_a_frame_size_past_the_limit_is_refused_before_decoding(odd):
    with pytest.raises(VideoReadError, match=r"frame size 64x48 exceeds the limit of 1000 pixels \(max_pixels=\)"):
        read_video(odd["plain"], 4, options=ReadOptions(max_pixels=1000))
    with pytest.raises(VideoReadError, match=r"frame size 96x64 exceeds the limit of 4000 pixels"):
        read_video(odd["size-change"], 20, options=ReadOptions(max_pixels=4000))  # the second half's frames


@requires_ffmpeg
@pytest.mark.slow
def test_a_huge_declared_frame_is_refused_quickly(tmp_path):
    path = tmp_path / "huge.avi"  # 1.5 MB on disk, 16000 x 16000 frames: 768 MB each in RGB
    subprocess.run([FFMPEG, "-loglevel", "error", "-f", "lavfi", "-i", "color=black:s=16000x16000:r=1", "-frames:v", "1",
                    "-c:v", "mjpeg", "-q:v", "31", str(path)], check=True, timeout=120)
    # the opening check's own error: refused from the stream's header, before any frame is decoded
    with pytest.raises(VideoReadError, match=r"frame size 16000x16000 exceeds the limit of 67108864 pixels"):
        read_video(path, 8)


def test_images_audio_empty_and_special_files_are_refused_quickly(tmp_path):
    import av
    from PIL import Image

    cases = {}
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "still.png")
    cases["still.png"] = r"an image \(PNG\), not a video"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "still.jpg")
    cases["still.jpg"] = r"an image \(.*\), not a video"
    with av.open(str(tmp_path / "audio.m4a"), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    cases["audio.m4a"] = "audio only, no video stream"
    for suffix, message in {"mp4": r"no video stream \(or only one without frames\)",
                            "mkv": "no video frames: the file ends before its first one"}.items():
        with av.open(str(tmp_path / f"zero-frames.{suffix}"), "w") as container:
            stream = container.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            container.start_encoding()  # the header, and not one frame
        cases[f"zero-frames.{suffix}"] = message
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases["empty.mp4"] = r"empty file \(0 bytes\)"
    (tmp_path / "folder.mp4").mkdir()
    cases["folder.mp4"] = "is a directory, not a video file"
    os.mkfifo(tmp_path / "pipe.mp4")  # opening a FIFO for reading would block until a writer comes: never
    cases["pipe.mp4"] = r"is a FIFO \(named pipe\), not a video file"
    cases["missing.mp4"] = "no such file"
    for name, message in cases.items():
        outcome: list[BaseException] = []

        def read(name=name):
            try:
                read_video(tmp_path / name, 4)
            except BaseException as exc:  # noqa: BLE001  (checked below, in the test's thread)
                outcome.append(exc)

        reader = threading.Thread(target=read, daemon=True)  # a FIFO opened for reading would block, never fail
        reader.start()
        reader.join(timeout=60)
        assert not reader.is_alive(), f"{name}: the read blocks"
        assert outcome and isinstance(outcome[0], VideoReadError), (name, outcome)
        assert re.search(message, str(outcome[0])), (name, str(outcome[0]))
    with pytest.raises(VideoReadError, match="is a character device, not a video file"):
        read_video("/dev/null", 4)


def test_a_resolution_change_keeps_the_first_size_on_every_path(odd):
    """The rule is the reader's, so streams and timelines get it too: every frame at the first frames' size."""
    video = VideoFile(odd["size-change"])
    decoded = video.decode(set(range(video.total)), threads=1, seek=False)
    assert {frame.shape for frame in decoded.frames.values()} == {(48, 64, 3)}


def test_the_seeking_decoders_and_the_front_to_back_one_give_the_same_frames_of_b_frame_video(odd):
    video = VideoFile(odd["b-frames"])
    wanted = {3, 30, 31, 70, 71, 72, 119}
    seeking = video._seeking(wanted, None, workers=3)
    assert seeking is not None
    straight = video.decode(wanted, threads=1, seek=False).frames
    for number in wanted:
        np.testing.assert_array_equal(seeking[number], straight[number])


def test_odd_builders_make_what_they_say(tmp_path):
    """The corpus's own check: a rotated file carries its matrix, a VFR file its irregular steps."""
    path = h264(tmp_path / "r.mp4", rotation=(90,), frames=2)
    assert VideoFile(path).width == 64
    path = encode(tmp_path / "g.mkv", "ffv1", "gray", frames=2)
    assert read_video(path, 2).shape == (2, 48, 64, 3)


@pytest.mark.slow
def test_a_file_read_as_a_stream_gives_the_windows_of_its_timeline(odd, tmp_path):
    """Rotation, variable frame rate, a size change and damage, through `stream` and `classify --window` alike."""
    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.pipeline import ClassifyJob, classify_corpus
    from vivit_deploy.pipeline.results import read_results
    from vivit_deploy.runtimes import load_runtime
    from vivit_deploy.streaming import StreamClassifier

    files = [str(odd[name]) for name in ("rotate-90", "vfr", "size-change", "zeroed-block", "10-bit")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedVideoWarning)
        classify_corpus(files, tmp_path / "t.jsonl", ClassifyJob(workers=2, window=0.8, hop=0.4))
        timeline = {(r["path"], r["window"]): r for r in read_results(tmp_path / "t.jsonl")}
        with load_runtime(demo_model_dir()) as runtime:
            records = [r for r in StreamClassifier(runtime, files, window=0.8, hop=0.4, reconnect=False) if "window" in r]
    assert {r["stream"] for r in records} == set(files)
    assert len(records) == len(timeline)
    for record in records:
        row = timeline[(record["stream"], record["window"])]
        assert row["start"] == pytest.approx(record["start"], abs=1e-3) and row["label"] == record["label"]
        assert row["probability"] == pytest.approx(record["probability"], abs=1e-5)


@pytest.mark.parametrize("name", READABLE + sorted(UNREADABLE))
def test_a_file_read_from_memory_gives_the_frames_and_the_errors_the_file_gives(odd, name):
    """What a server does with a file it receives (``VideoBytes``): the same frames, the same damage report (frames
    replaced, truncation), the same one-line refusal, named by the name it was given."""
    from vivit_deploy.video.opening import VideoBytes

    data = odd[name].read_bytes()
    if name in UNREADABLE:
        with pytest.raises(VideoReadError, match=UNREADABLE[name]) as error:
            decode_clips(VideoBytes(data, "upload 7"), 8, num_clips=2, sampling="uniform")
        assert str(error.value).startswith("upload 7: ") and "\n" not in str(error.value)
        return
    from_file = decode_clips(odd[name], 8, num_clips=2, sampling="uniform")
    from_memory = decode_clips(VideoBytes(data, name), 8, num_clips=2, sampling="uniform")
    np.testing.assert_array_equal(from_memory.array, from_file.array)
    assert (from_memory.frames, from_memory.replaced, from_memory.truncated) == \
        (from_file.frames, from_file.replaced, from_file.truncated)
    unturned = decode_clips(VideoBytes(data, name), 4, num_clips=1, options=ReadOptions(autorotate=False))
    np.testing.assert_array_equal(unturned.array, decode_clips(odd[name], 4, num_clips=1,
                                                               options=ReadOptions(autorotate=False)).array)


def test_bytes_that_are_not_a_video_are_refused_in_one_line():
    from vivit_deploy.video.opening import VideoBytes

    for data, reason in ((b"", "empty"), (b"\x00" * 4096, "not a video FFmpeg can read"),
                         (b"GIF89a" + bytes(64), "not a video FFmpeg can read")):
        with pytest.raises(VideoReadError, match=reason) as error:
            read_video(VideoBytes(data, "request 3"), 4)
        assert str(error.value).startswith("request 3: ") and "\n" not in str(error.value)
