"""vivit-deploy classify --ray: a local Ray gives the local job's rows; a lost node loses no video and doubles none.

Everything binds to 127.0.0.1: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (set by tests/conftest.py before ray is
imported) makes Ray use the loopback address for the head, every node and the GCS instead of the machine's
network address; the test checks the node addresses.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from vivit_deploy.pipeline import LOCAL_RAY, ClassifyJob, classify_corpus
from vivit_deploy.pipeline.results import read_results
from tests.pipeline.conftest import BAD, GOOD

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'vivit-deploy[ray]'")


@pytest.fixture(autouse=True)
def loopback_only():
    from ray._private import ray_constants

    assert not ray_constants.ENABLE_RAY_CLUSTER, "tests/conftest.py must set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before ray is imported"
    yield
    if ray.is_initialized():
        ray.shutdown()


def summary_of(path: Path) -> dict[str, tuple]:
    rows = read_results(path)
    assert len(rows) == len({r["path"] for r in rows}), "a video appears more than once"
    return {r["path"]: (r["label"], r["error"], r["top_k"]) for r in rows}


def assert_same_rows(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for path in a:
        label, error, top = a[path]
        assert (label, error) == b[path][:2], path
        if top is not None:
            assert [p["label"] for p in top] == [p["label"] for p in b[path][2]]
            for p, q in zip(top, b[path][2]):
                assert abs(p["probability"] - q["probability"]) < 1e-5


@pytest.mark.slow
def test_a_local_ray_gives_the_rows_of_the_local_job(corpus, tmp_path):
    directory, _ = corpus
    on_ray = tmp_path / "ray.parquet"
    summary = classify_corpus([str(directory)], on_ray, ClassifyJob(ray=LOCAL_RAY, batch_size=4))
    assert (summary.classified, summary.failed) == (GOOD + len(BAD), len(BAD))
    assert summary.executor.startswith("Ray (1 nodes")
    assert not ray.is_initialized()  # the job started it, the job shut it down
    here = tmp_path / "here.parquet"
    classify_corpus([str(directory)], here, ClassifyJob(workers=2))
    assert_same_rows(summary_of(on_ray), summary_of(here))
    # a Ray run resumes a local one: same store, same settings
    resumed = classify_corpus([str(directory)], here, ClassifyJob(ray=LOCAL_RAY))
    assert (resumed.skipped, resumed.classified) == (GOOD + len(BAD), 0)


@pytest.mark.slow
def test_a_worker_node_lost_mid_job_still_gives_every_video_exactly_once(corpus, tmp_path):
    from ray.cluster_utils import Cluster

    directory, _ = corpus
    inputs = [str(directory)]
    for copy in ("a", "b"):
        target = tmp_path / "more" / copy
        target.mkdir(parents=True)
        for video in directory.iterdir():
            (target / video.name).write_bytes(video.read_bytes())
    inputs.append(str(tmp_path / "more"))
    total = 3 * (GOOD + len(BAD))

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        output = tmp_path / "results.jsonl"
        parts = tmp_path / "results.jsonl.parts"
        removed = threading.Event()

        def remove_worker_mid_job() -> None:
            deadline = time.monotonic() + 120
            while not list(parts.glob("part-*.jsonl")) and time.monotonic() < deadline:
                time.sleep(0.01)
            cluster.remove_node(worker)
            removed.set()

        killer = threading.Thread(target=remove_worker_mid_job, daemon=True)
        killer.start()
        assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
        summary = classify_corpus(inputs, output, ClassifyJob(ray=cluster.address, batch_size=1))
        killer.join(timeout=60)
        assert removed.is_set()
        assert summary.classified == total, "the node was removed after the job had finished: give it more videos"
        assert summary.executor.startswith("Ray (2 nodes")
        assert ray.is_initialized()  # joined, not started: left running for its owner
    finally:
        ray.shutdown()
        cluster.shutdown()
    rows = summary_of(output)
    assert len(rows) == total
    reference = tmp_path / "reference.jsonl"
    classify_corpus(inputs, reference, ClassifyJob(workers=2))
    assert_same_rows(rows, summary_of(reference))


@pytest.mark.slow
def test_cuda_on_a_cluster_without_gpus_is_a_clear_error(corpus, tmp_path):
    from vivit_deploy.pipeline.ray_job import RayJobError

    directory, _ = corpus
    with pytest.raises(RayJobError, match="the Ray cluster has no GPU"):
        classify_corpus([str(directory)], tmp_path / "r.jsonl", ClassifyJob(ray=LOCAL_RAY, device="cuda"))
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.slow
def test_a_timeline_on_ray_gives_the_local_timeline(tmp_path):
    from vivit_deploy.demo.motion import write_phases

    (tmp_path / "videos").mkdir()
    write_phases(tmp_path / "videos" / "a.mp4", [(1, 2), (0, 2)])
    on_ray, here = tmp_path / "ray.jsonl", tmp_path / "here.jsonl"
    classify_corpus([tmp_path / "videos"], on_ray, ClassifyJob(ray=LOCAL_RAY, window=2.0, batch_size=2))
    classify_corpus([tmp_path / "videos"], here, ClassifyJob(window=2.0, workers=1))
    rows = {(r["path"], r["window"]): (r["start"], r["label"], r["probability"]) for r in read_results(on_ray)}
    local = {(r["path"], r["window"]): (r["start"], r["label"], r["probability"]) for r in read_results(here)}
    assert set(rows) == set(local) and len(rows) == 4
    for key, (start, label, probability) in rows.items():
        assert (start, label) == local[key][:2] and abs(probability - local[key][2]) < 1e-5
