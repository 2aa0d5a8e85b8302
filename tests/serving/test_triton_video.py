"""Triton serves videos: a real tritonserver (2.51, CPU, python backend) with the demo model's `--video` repository,
on 127.0.0.1 with free ports (HTTP and gRPC). An encoded file goes in as one BYTES element and is read on the server by
the reader every other path uses; each test is bounded and the server stops with the module.

Set-up: `bash scripts/setup_triton_server.sh DIR` and VIVIT_TRITON_HOME=DIR (.ci/run does both); without it these
tests skip and say so.
"""

from __future__ import annotations

import json
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("tritonclient", reason="tritonclient is not installed: pip install 'vivit-deploy[triton]'")

from tests.video.conftest import encode, h264, zero_block  # noqa: E402
from vivit_deploy.serving.local_server import LocalTritonServer, triton_home_problem  # noqa: E402

pytestmark = [pytest.mark.triton,
              pytest.mark.skipif(triton_home_problem() is not None, reason=str(triton_home_problem()))]

MAX_BYTES = 400_000  # the repository's --max-video-bytes: above every good file here
MAX_PIXELS = 200 * 150  # the repository's --max-pixels: the "too large" file below is 256x192


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Files users send: the demo task's clips, phone rotation, odd sizes, damage; and ones the server must refuse."""
    from vivit_deploy.demo import sample_videos

    d = tmp_path_factory.mktemp("sent")
    out = {f"sample-{i}": Path(p) for i, (p, _) in enumerate(sample_videos()[:3])}
    out["rotated"] = h264(d / "rotated.mp4", rotation=(90,))
    out["odd-size"] = encode(d / "odd-size.mkv", "ffv1", "yuv444p", width=65, height=47)
    out["b-frames"] = h264(d / "b-frames.mp4", frames=120, options={"bf": "3", "g": "24"},
                           container_options={"movflags": "faststart"})
    out["damaged"] = zero_block(out["b-frames"], d / "damaged.mp4", 0.55)
    data = out["b-frames"].read_bytes()
    out["truncated"] = d / "truncated.mp4"
    out["truncated"].write_bytes(data[: int(len(data) * 0.7)])
    # refused: not a video, cut before its index, frames past --max-pixels, over --max-video-bytes, empty
    out["junk"] = d / "junk.mp4"
    out["junk"].write_bytes(b"\x00\x01" * 3000)
    plain = h264(d / "plain.mp4")
    out["no-index"] = d / "no-index.mp4"
    out["no-index"].write_bytes(plain.read_bytes()[: plain.stat().st_size // 2])
    out["too-large-frames"] = h264(d / "large.mp4", width=256, height=192, frames=8)
    out["too-many-bytes"] = d / "big.mp4"
    out["too-many-bytes"].write_bytes(data + bytes(MAX_BYTES))  # a real file's start: refused for its size alone
    return out


BAD = {"junk": "not a video FFmpeg can read", "no-index": "not a video FFmpeg can read",
       "too-large-frames": r"frame size 256x192 exceeds the limit of 30000 pixels",
       "too-many-bytes": "over the server's limit of 400,000"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, demo_onnx):
    from vivit_deploy.serving.repository import write_repository

    repo = tmp_path_factory.mktemp("triton-video") / "repo"
    write_repository(demo_onnx, repo, platform="python", max_queue_delay_us=2000, video=True,
                     max_video_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, video_instances=2)
    with LocalTritonServer(None, repo, grpc=True) as running:
        yield running


@pytest.fixture(scope="module")
def runtimes(served, demo_onnx):
    from vivit_deploy.runtimes import load_runtime

    with load_runtime(f"triton://{served.http}/vivit") as remote, load_runtime(demo_onnx, device="cpu") as local:
        yield remote, local


def local_reading(local, path, **kwargs):
    """What predict computes here for ``path``: the mean logits of its clips, frames replaced, the reading's notes."""
    from vivit_deploy.predict import VideoClassifier
    from vivit_deploy.video.opening import ReadOptions

    autorotate = kwargs.pop("autorotate", True)
    classifier = VideoClassifier(local, read_options=ReadOptions(autorotate=autorotate))
    read = classifier.read(path, **kwargs)
    return classifier.logits(read.array).mean(axis=0), read.replaced, read.notes()


@pytest.mark.parametrize("name", ["sample-0", "sample-1", "rotated", "odd-size", "damaged", "truncated"])
def test_a_file_sent_as_bytes_gets_predicts_logits_for_that_file(runtimes, files, name):
    remote, local = runtimes
    assert remote.takes_files and remote.video_model == "vivit_video" and remote.max_video_bytes == MAX_BYTES
    for options in ({}, {"num_clips": 3, "sampling": "stride", "frame_sample_rate": 2}, {"autorotate": False}):
        served = remote.run_video(files[name], **options)
        logits, replaced, notes = local_reading(local, files[name], **options)
        np.testing.assert_allclose(served.logits, logits, atol=1e-5)
        assert (served.damaged_frames, served.notes) == (replaced, notes)
    if name in ("damaged", "truncated"):
        assert served.notes  # what predict warns of comes back with the logits
    from vivit_deploy.errors import ConfigError

    with pytest.raises(ConfigError, match="reads at most 16 clips of a video"):  # the server's limit, checked here
        remote.run_video(files[name], num_clips=17)


def test_bad_files_sent_among_good_ones_each_fail_alone_and_the_server_stays_up(served, runtimes, files):
    from vivit_deploy.errors import VideoReadError

    remote, local = runtimes
    good = ["sample-0", "sample-1", "sample-2", "rotated", "damaged", "odd-size"]
    names = [n for pair in zip(good, list(BAD) + ["junk", "no-index"]) for n in pair] * 2

    def send(name):
        try:
            return name, remote.run_video(files[name]), None
        except VideoReadError as exc:
            return name, None, str(exc)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(send, names))
    for name, answer, error in results:
        if name in BAD:
            assert answer is None and re.search(BAD[name], error), (name, error)
            assert error.startswith(f"{files[name]}: ") and "\n" not in error
        else:
            assert error is None, (name, error)
            np.testing.assert_allclose(answer.logits, local_reading(local, files[name])[0], atol=1e-5)
    assert served.alive()


def test_a_file_over_the_limit_is_refused_by_the_server_before_it_is_decoded(served, files):
    """A client that does not check first (plain tritonclient) sends it: the server refuses it for its size, not for
    what it holds (its bytes past the real file's are zeros, which a read would reject otherwise)."""
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(served.http)
    tensor = http.InferInput("video", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([files["too-many-bytes"].read_bytes()], dtype=np.object_))
    with pytest.raises(InferenceServerException, match=r"big\.mp4: the video is [\d,]+ bytes, over this model's limit "
                                                       r"of 400,000"):
        client.infer("vivit_video", [tensor], request_id="big.mp4")
    tensor = http.InferInput("video", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b""], dtype=np.object_))
    with pytest.raises(InferenceServerException, match=r"the video sent \(0 bytes\): empty"):
        client.infer("vivit_video", [tensor])
    assert served.alive()


def test_predict_and_classify_send_the_files_and_decode_nothing_here(served, runtimes, files, demo_onnx, tmp_path,
                                                                     monkeypatch):
    from vivit_deploy.cli import main
    from vivit_deploy.predict import VideoClassifier

    remote, local = runtimes
    url = f"triton://{served.http}/vivit"

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded on the client")

    monkeypatch.setattr("vivit_deploy.predict.decode_clips", no_decoding)
    result = CliRunner().invoke(main, ["predict", str(files["sample-0"]), str(files["damaged"]), "--model", url,
                                       "--json", "-", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)
    monkeypatch.undo()
    here = VideoClassifier(local)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for answer, name in zip(answers, ("sample-0", "damaged")):
            predictions, damaged = here.classify_file(files[name], top_k=2)
            assert [p["label"] for p in answer["predictions"]] == [p.label for p in predictions]
            np.testing.assert_allclose([p["probability"] for p in answer["predictions"]],
                                       [p.probability for p in predictions], atol=1e-6)
            assert answer["damaged_frames"] == damaged
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("sample-0", "sample-1", "rotated", "junk", "too-many-bytes"):
        (corpus / f"{name}{files[name].suffix}").write_bytes(files[name].read_bytes())
    output = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(main, ["classify", str(corpus), "-o", str(output), "--model", url, "--workers", "3"])
    assert result.exit_code == 0, result.output
    assert "vivit_video" in result.output and "the files sent, 3 at a time" in result.output
    rows = {Path(r["path"]).stem: r for r in map(json.loads, output.read_text().splitlines())}
    assert set(rows) == {"sample-0", "sample-1", "rotated", "junk", "too-many-bytes"}
    assert "not a video FFmpeg can read" in rows["junk"]["error"] and "over the server's limit" in rows["too-many-bytes"]["error"]
    for name in ("sample-0", "sample-1", "rotated"):
        assert rows[name]["error"] is None and rows[name]["label"] == here.classify(files[name], top_k=1)[0].label


def _example(name: str, url: str, video: Path) -> str:
    """The python block after ``<!-- example: NAME -->`` in docs/triton.md, pointed at this server and file."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "triton.md").read_text()
    block = re.search(rf"<!-- example: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert block, f"docs/triton.md has no '{name}' example"
    return block.group(1).replace('"localhost:8000"', repr(url)).replace('"localhost:8001"', repr(url)).replace(
        '"clip.mp4"', repr(str(video)))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_plain_tritonclient_examples_of_the_docs_run(served, runtimes, files, protocol, capsys):
    """docs/triton.md's examples as a user copies them (only the address and the file changed), over HTTP and gRPC."""
    pytest.importorskip(f"tritonclient.{protocol}", reason=f"tritonclient[{protocol}] is not installed")
    remote, local = runtimes
    url = served.http if protocol == "http" else served.grpc
    scope: dict = {}
    exec(compile(_example(protocol, url, files["sample-0"]), f"docs/triton.md ({protocol})", "exec"), scope)
    clips = 2 if protocol == "http" else 1  # the HTTP example asks for two clips
    np.testing.assert_allclose(scope["logits"], local_reading(local, files["sample-0"], num_clips=clips)[0], atol=1e-5)
    assert "moving down" in capsys.readouterr().out
