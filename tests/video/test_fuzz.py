"""A seeded, bounded fuzz: mutations of real files, each read every way in a process of its own with a time limit.

Every file must be read or refused with our typed error, never another exception, a crash or a hang; every way
of reading it (one decoder per core, one, two, front to back) must give the same frames and the same count of
replaced frames, and the frames preprocessed as they are decoded must equal the preprocessed clip. Then the
commands: ``predict``, ``classify`` (its decoding processes) and ``stream`` (a file read as a stream, against
``classify --window``) must agree on every file.
"""

from __future__ import annotations

import json
import random
import warnings
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.video.conftest import encode

SEED = 20261204
MUTANTS = 40
ROOT = Path(__file__).resolve().parents[2]


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One mutation of the kinds damaged files show: flipped bits, a cut, a zeroed block, a mangled header, a hole."""
    data = bytearray(data)
    kind = rng.choice(["bits", "cut", "zeros", "header", "hole"])
    if kind == "bits":
        for _ in range(rng.randint(1, 16)):
            at = rng.randrange(len(data))
            data[at] ^= 1 << rng.randrange(8)
    elif kind == "cut":
        data = data[: rng.randrange(len(data) // 8, len(data))]
    elif kind == "zeros":
        at = rng.randrange(len(data))
        data[at:at + 1024] = bytes(len(data[at:at + 1024]))
    elif kind == "header":
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(min(2048, len(data)))] = rng.randrange(256)
    else:
        at = rng.randrange(len(data))
        del data[at:at + rng.randint(16, 2048)]
    return kind, bytes(data)


@pytest.fixture(scope="module")
def mutants(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("fuzz")
    size = dict(width=96, height=64, frames=75, rate=25)
    bases = [
        encode(d / "h264.mp4", "libx264", "yuv420p", options={"bf": "3", "g": "25"}, **size),
        encode(d / "hevc.mp4", "libx265", "yuv420p", options={"x265-params": "log-level=error:keyint=25"}, **size),
        encode(d / "vp9.webm", "libvpx-vp9", "yuv420p", options={"g": "25", "deadline": "realtime"}, **size),
        encode(d / "mpeg2.ts", "mpeg2video", "yuv420p", options={"g": "15", "bf": "2"}, container_format="mpegts", **size),
        encode(d / "mjpeg.avi", "mjpeg", "yuvj420p", **size),
        encode(d / "mpeg4.mkv", "mpeg4", "yuv420p", options={"g": "20"}, **size),
    ]
    rng = random.Random(SEED)
    out = []
    for i in range(MUTANTS):
        base = bases[i % len(bases)]
        kind, data = mutate(base.read_bytes(), rng)
        path = d / f"{i:02d}-{kind}-{base.name}"
        path.write_bytes(data)
        out.append(path)
    return out


def read_in_child(path: Path) -> dict:
    try:
        done = subprocess.run([sys.executable, "-m", "tests.video.fuzz_child", str(path)], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return {"hang": str(path)}
    if done.returncode != 0:
        return {"crash": done.returncode, "stderr": done.stderr[-500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def outcomes(mutants) -> dict[Path, dict]:
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(mutants, pool.map(read_in_child, mutants)))


@pytest.mark.slow
def test_every_mutant_is_read_the_same_every_way_or_refused_with_our_error(outcomes):
    refused = read = 0
    for path, outcome in outcomes.items():
        assert "hang" not in outcome and "crash" not in outcome, (path.name, outcome)
        ways = {name: result for name, result in outcome.items() if name != "fused"}
        assert all(result[0] in ("ok", "VideoReadError") for result in outcome.values()), (path.name, outcome)
        assert len({json.dumps(result) for result in ways.values()}) == 1, (path.name, outcome)  # one answer
        if outcome["predict"][0] == "ok":
            read += 1
            assert outcome["fused"] == ["ok", True, outcome["predict"][2]], (path.name, outcome)
        else:
            refused += 1
            assert str(path) in outcome["predict"][1] and "\n" not in outcome["predict"][1]
    assert read and refused  # the mutations reach both kinds


@pytest.mark.slow
def test_predict_classify_and_stream_agree_on_every_mutant(outcomes, tmp_path):
    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.errors import VideoReadError
    from vivit_deploy.pipeline import ClassifyJob, classify_corpus
    from vivit_deploy.pipeline.results import read_results
    from vivit_deploy.predict import VideoClassifier
    from vivit_deploy.runtimes import load_runtime
    from vivit_deploy.streaming import StreamClassifier

    warnings.simplefilter("ignore")  # damaged files warn, by design; the counts are compared below

    files = [path for path, outcome in outcomes.items() if "crash" not in outcome and "hang" not in outcome]
    runtime = load_runtime(demo_model_dir())
    classifier = VideoClassifier(runtime)
    predicted = {}
    for path in files:  # what `vivit-deploy predict` does with each
        try:
            read = classifier.read(path)
            top = classifier.classify(read.array, top_k=3)
            predicted[str(path)] = (top[0].label, top[0].probability, read.replaced, None)
        except VideoReadError as exc:
            predicted[str(path)] = (None, None, None, str(exc))
    classify_corpus(files, tmp_path / "rows.jsonl", ClassifyJob(workers=2, batch_size=4))
    rows = {row["path"]: row for row in read_results(tmp_path / "rows.jsonl")}
    for path, (label, probability, replaced, error) in predicted.items():
        row = rows[path]
        assert row["error"] == error, path
        if error is None:
            assert row["label"] == label and row["probability"] == pytest.approx(probability, abs=1e-5), path
            assert row["damaged_frames"] == replaced, path
    # a file read as a stream gives the windows classify --window gives (the same frames by time, damage included)
    readable = [p for p in files if predicted[str(p)][3] is None]
    classify_corpus(readable, tmp_path / "timeline.jsonl", ClassifyJob(workers=2, batch_size=4, window=1.0, hop=0.5))
    timeline = {(r["path"], r["window"]): r for r in read_results(tmp_path / "timeline.jsonl") if r["window"] is not None}
    records = [r for r in StreamClassifier(runtime, [str(p) for p in readable], window=1.0, hop=0.5, reconnect=False)
               if "window" in r]
    assert records
    for record in records:
        row = timeline.get((record["stream"], record["window"]))
        assert row is not None, record
        assert (row["start"], row["end"]) == (pytest.approx(record["start"], abs=1e-3), pytest.approx(record["end"], abs=1e-3))
        assert row["label"] == record["label"], record
        assert row["probability"] == pytest.approx(record["probability"], abs=1e-5), record
