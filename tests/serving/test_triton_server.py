"""A real tritonserver (2.51, CPU, python backend) serving the demo model's `--platform python` repository
with the uint8-frames ensemble, on 127.0.0.1 with free ports; every test is bounded and stops the server.

Set-up: `bash scripts/setup_triton_server.sh DIR` and VIVIT_TRITON_HOME=DIR (.ci/run does both);
without it these tests skip and say so.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("tritonclient", reason="tritonclient is not installed: pip install 'vivit-deploy[triton]'")

from vivit_deploy.serving.local_server import LocalTritonServer, triton_home_problem  # noqa: E402

pytestmark = [pytest.mark.triton,
              pytest.mark.skipif(triton_home_problem() is not None, reason=str(triton_home_problem()))]


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_onnx):
    from vivit_deploy.serving.repository import write_repository

    repo = tmp_path_factory.mktemp("triton") / "repo"
    write_repository(demo_onnx, repo, platform="python", max_queue_delay_us=2000)
    with LocalTritonServer(None, repo) as running:
        yield running


@pytest.fixture(scope="module")
def runtimes(server, demo_onnx):
    from vivit_deploy.runtimes import load_runtime

    with load_runtime(f"triton://{server.http}/vivit") as remote, load_runtime(demo_onnx, device="cpu") as local:
        yield remote, local


def test_the_samples_through_the_ensemble_get_the_local_predictions(runtimes):
    from vivit_deploy.demo import sample_videos
    from vivit_deploy.predict import VideoClassifier

    remote, local = runtimes
    assert remote.frames_model == "vivit_frames" and remote.precision == "fp32"
    served, here = VideoClassifier(remote), VideoClassifier(local)
    for path, label in sample_videos():
        a, b = served.classify(path, top_k=4), here.classify(path, top_k=4)
        assert [p.label for p in a] == [p.label for p in b]
        np.testing.assert_allclose([p.probability for p in a], [p.probability for p in b], atol=1e-6)


def test_the_served_model_keeps_the_runtime_contract(runtimes):
    from vivit_deploy.errors import InputShapeError

    remote, local = runtimes
    assert remote.id2label == local.id2label and remote.preprocessor == local.preprocessor
    assert remote.input_spec == local.input_spec
    x = np.random.default_rng(0).standard_normal((5, 8, 3, 32, 32), dtype=np.float32)
    out = remote.run(x)
    assert out.dtype == np.float32 and out.shape == (5, 4)
    np.testing.assert_allclose(out, local.run(x), atol=1e-5)
    with pytest.raises(InputShapeError, match="must be float32, got float64"):
        remote.run(x.astype(np.float64))


def test_concurrent_requests_are_batched_and_match_serial_ones(runtimes):
    remote, _ = runtimes
    inputs = [np.random.default_rng(i).standard_normal((1, 8, 3, 32, 32), dtype=np.float32) for i in range(16)]
    serial = [remote.run(x) for x in inputs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(remote.run, inputs))
    for a, b in zip(serial, together):  # batched with other requests: sums in another order, fp32 rounding apart
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_malformed_requests_are_refused_and_the_server_stays_up(server, runtimes):
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(server.http)
    headers = {"Content-Type": "application/octet-stream"}

    def send(model, name, array, datatype):
        tensor = http.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        return client.infer(model, [tensor], headers=headers)

    bad = [
        ("vivit", "pixel_values", np.zeros((1, 7, 3, 32, 32), np.float32), "FP32"),  # wrong shape
        ("vivit", "pixel_values", np.zeros((1, 8, 3, 32, 32), np.float64), "FP64"),  # wrong type
        ("vivit_frames", "frames", np.zeros((1, 8, 20, 20, 3), np.float32), "FP32"),  # frames not uint8
        ("vivit_frames", "frames", np.zeros((1, 5, 20, 20, 3), np.uint8), "UINT8"),  # too few frames
    ]
    for model, name, array, datatype in bad:
        with pytest.raises(InferenceServerException):
            send(model, name, array, datatype)
    assert server.alive()
    remote, local = runtimes
    x = np.ones((2, 8, 3, 32, 32), np.float32)
    np.testing.assert_allclose(remote.run(x), local.run(x), atol=1e-5)


def test_predict_compare_and_classify_through_the_server(server, demo_onnx, tmp_path):
    from vivit_deploy.cli import main
    from vivit_deploy.demo import SAMPLES, default_sample

    from vivit_deploy.predict import VideoClassifier

    url = f"triton://{server.http}/vivit"
    result = CliRunner().invoke(main, ["predict", str(default_sample()), "--model", url, "--json", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["predictions"][0]["label"] == "moving down"
    result = CliRunner().invoke(main, ["compare", "--triton", url, "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["candidates"][0]["stats"]["accuracy"] == report["reference_accuracy"]
    assert report["candidates"][0]["stats"]["top1_agreement"] == 1.0
    output = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(main, ["classify", str(SAMPLES), "-o", str(output), "--model", url, "--workers", "2"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    labels = json.loads((SAMPLES / "labels.json").read_text())
    assert len(rows) == len(labels) and all(r["error"] is None and r["backend"] == "triton" for r in rows)
    local = VideoClassifier.from_pretrained(demo_onnx, device="cpu")
    here = {p.name: local.classify(p, top_k=1)[0].label for p in SAMPLES.glob("*.mp4")}
    assert {r["path"].rsplit("/", 1)[1]: r["label"] for r in rows} == here


def test_a_stream_is_classified_through_the_server_with_uint8_frames(server, runtimes, tmp_path):
    """`stream --model triton://...`: many stream processes can share one inference service."""
    from vivit_deploy.streaming import StreamClassifier
    from vivit_deploy.demo.motion import write_phases

    remote, local = runtimes
    video = write_phases(tmp_path / "phases.mp4", [(1, 2), (0, 2)])
    served = StreamClassifier(remote, [str(video)], window=2.0, hop=2.0, smooth=1)
    assert served.send_frames  # the ensemble preprocesses on the server
    records = [r for r in served if "event" not in r]
    expected = [r for r in StreamClassifier(local, [str(video)], window=2.0, hop=2.0, smooth=1) if "event" not in r]
    assert [r["label"] for r in records] == [r["label"] for r in expected] == ["moving right"] * 2 + ["moving left"] * 2
    np.testing.assert_allclose([r["probability"] for r in records], [r["probability"] for r in expected], atol=1e-4)


def test_a_merged_file_is_served_as_any_other(tmp_path):
    """A file exported with token merging: the repository serves it, the client reads its merging from the served
    metadata, and the server's logits are ONNX Runtime's on the same file."""
    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.export import export_onnx
    from vivit_deploy.runtimes import load_runtime
    from vivit_deploy.serving.repository import write_repository

    merged = tmp_path / "merged.onnx"
    export_onnx(demo_model_dir(), merged, merge_tokens=8)
    write_repository(merged, tmp_path / "repo", platform="python")
    with LocalTritonServer(None, tmp_path / "repo") as running:
        with load_runtime(f"triton://{running.http}/vivit") as remote, load_runtime(merged, device="cpu") as local:
            assert remote.merge_tokens == local.merge_tokens == (8, 8, 8, 8)
            x = np.random.default_rng(1).standard_normal((3, 8, 3, 32, 32), dtype=np.float32)
            np.testing.assert_allclose(remote.run(x), local.run(x), atol=1e-5)


def test_a_videomae_file_is_served_as_any_other(tmp_path):
    """Another model family behind Triton: the repository's python backend reads the file's VideoMAE config and its
    processor (the frames ensemble preprocesses with VideoMAE's meaning), and the logits are ONNX Runtime's."""
    transformers = pytest.importorskip("transformers", reason="transformers (to write the checkpoint) is not installed")
    import torch

    from vivit_deploy.export import export_onnx
    from vivit_deploy.runtimes import load_runtime
    from vivit_deploy.serving.repository import write_repository

    torch.manual_seed(0)
    config = transformers.VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
                                         num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=3)
    transformers.VideoMAEForVideoClassification(config).save_pretrained(tmp_path / "ckpt")
    transformers.VideoMAEImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}
                                           ).save_pretrained(tmp_path / "ckpt")
    export_onnx(tmp_path / "ckpt", tmp_path / "videomae.onnx")
    write_repository(tmp_path / "videomae.onnx", tmp_path / "repo", platform="python")
    with LocalTritonServer(None, tmp_path / "repo") as running:
        with load_runtime(f"triton://{running.http}/vivit") as remote, load_runtime(tmp_path / "videomae.onnx") as local:
            assert remote.config.model_type == "videomae" and remote.preprocessor == local.preprocessor
            x = np.random.default_rng(2).standard_normal((2, 4, 3, 32, 32), dtype=np.float32)
            np.testing.assert_allclose(remote.run(x), local.run(x), atol=1e-5)
            frames = np.random.default_rng(3).integers(0, 256, (2, 4, 40, 48, 3), dtype=np.uint8)
            from vivit_deploy.predict import VideoClassifier

            np.testing.assert_allclose(VideoClassifier(remote).logits(frames), VideoClassifier(local).logits(frames),
                                       atol=1e-5)
