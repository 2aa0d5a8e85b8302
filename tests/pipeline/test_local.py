"""The decoding processes of the local executor: results, a worker that crashes, workers that cannot start."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from vivit_deploy.demo import demo_model_dir
from vivit_deploy.pipeline.inputs import VideoItem
from vivit_deploy.pipeline.local import DecodePool, WorkerCrashError
from vivit_deploy.pipeline.model import describe_model
from vivit_deploy.pipeline.stages import ClipLoader, ClipSpec


class CrashingLoader(ClipLoader):
    """Kills its own process (as a segfault in a native decoder would) on files whose name says so."""

    def load(self, path):
        if "crash" in Path(path).name:
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().load(path)


class DeadOnArrivalLoader(ClipLoader):
    """Every worker dies on its first video: a broken environment, not a broken video."""

    def load(self, path):
        os._exit(3)


def loader(cls=ClipLoader) -> ClipLoader:
    info = describe_model(demo_model_dir())
    return cls(ClipSpec(info.config.num_frames), info.preprocessor)


def items(paths) -> list[VideoItem]:
    return [VideoItem(i, str(p)) for i, p in enumerate(paths)]


def test_results_match_the_loader_in_this_process(corpus):
    directory, labels = corpus
    paths = sorted(directory / n for n in labels)
    direct = loader()
    with DecodePool(loader(), 2) as pool:
        results = {d.item.path: d for d in pool.map_unordered(items(paths))}
    assert set(results) == {str(p) for p in paths}
    for path in paths:
        decoded = results[str(path)]
        if labels[path.name] is None:
            assert decoded.pixel_values is None and path.name in decoded.error
        else:
            np.testing.assert_array_equal(decoded.pixel_values, direct.load(path).pixel_values)
            assert decoded.decode_s > 0 and decoded.preprocess_s > 0


def test_a_video_that_crashes_its_decoder_is_a_failed_row_and_the_rest_go_on(corpus):
    directory, labels = corpus
    crash = directory / "crash.mp4"
    crash.write_bytes((directory / "clip00.mp4").read_bytes())
    good = sorted(directory / n for n, label in labels.items() if label is not None)
    with DecodePool(loader(CrashingLoader), 2) as pool:
        results = {Path(d.item.path).name: d for d in pool.map_unordered(items([*good[:4], crash, *good[4:]]))}
        assert pool.restarts == 2  # tried twice, on a fresh process each time
    assert len(results) == len(good) + 1
    assert results["crash.mp4"].error == f"the decoding process died (signal {signal.SIGSEGV}) while reading this video, twice"
    assert all(results[p.name].error is None for p in good)


def test_workers_that_die_before_decoding_anything_stop_the_job(corpus):
    directory, labels = corpus
    with DecodePool(loader(DeadOnArrivalLoader), 2) as pool:
        with pytest.raises(WorkerCrashError, match=r"died \d+ times \(exit code 3\) before decoding any video"):
            list(pool.map_unordered(items(sorted(directory.iterdir()))))
