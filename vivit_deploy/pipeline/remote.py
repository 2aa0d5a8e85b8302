"""The corpus job against a server that reads video files itself (a Triton model with its video model): each file is
sent as it is, ``concurrency`` at a time, and nothing is decoded on this machine.

A file the server cannot read (or that is over its size limit) gets its one-line reason in its row, as a file read here
would; a failure of the server or the connection stops the job, whose finished rows are kept (a rerun resumes).
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Callable

from vivit_deploy.errors import VideoReadError
from vivit_deploy.pipeline.local import StageTimes
from vivit_deploy.pipeline.stages import result_row

if TYPE_CHECKING:
    from vivit_deploy.pipeline.inputs import VideoItem
    from vivit_deploy.pipeline.results import ResultStore
    from vivit_deploy.pipeline.stages import ResultSettings
    from vivit_deploy.runtimes.base import Runtime

Progress = Callable[[int, int], None]
ROWS_PER_PART = 16  # finished rows written together (a part of the results store)


def send_files(items: list["VideoItem"], runtime: "Runtime", store: "ResultStore", settings: "ResultSettings", *,
               concurrency: int, num_clips: int, sampling: str, frame_sample_rate: int, autorotate: bool,
               top_k: int, progress: Progress | None = None) -> StageTimes:
    """Classify ``items`` by sending each file to ``runtime.run_video``, at most ``concurrency`` in flight; rows are
    written to ``store`` in parts as they finish. ``times.inference`` sums each request's wall time (decoding and
    the model, on the server)."""
    from vivit_deploy.accuracy.evaluation import softmax
    from vivit_deploy.predict import ranked

    times = StageTimes()
    times.workers = {"concurrent_requests": concurrency}
    rows: list[dict] = []
    counts = {"clips": 0, "failed": 0}

    def one(item: "VideoItem") -> tuple[dict, float]:
        started = time.perf_counter()
        try:
            served = runtime.run_video(item.path, num_clips=num_clips, sampling=sampling,
                                       frame_sample_rate=frame_sample_rate, autorotate=autorotate)
        except VideoReadError as exc:  # this file: its row says why; the others go on
            return result_row(item.path, settings, error=str(exc)), time.perf_counter() - started
        predictions = ranked(softmax(served.logits), runtime.id2label, top_k)
        return (result_row(item.path, settings, predictions, damaged_frames=served.damaged_frames),
                time.perf_counter() - started)

    def flush(final: bool = False) -> None:
        nonlocal rows
        if rows and (final or len(rows) >= ROWS_PER_PART):
            times.write_part(store, rows, counts["clips"], counts["failed"], progress)
            rows, counts["clips"], counts["failed"] = [], 0, 0

    pending = iter(items)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="vivit-send") as pool:
        running = set()
        try:
            for item in pending:
                running.add(pool.submit(one, item))
                if len(running) < concurrency:
                    continue
                done, running = wait(running, return_when=FIRST_COMPLETED)
                _collect(done, rows, counts, times, num_clips)
                flush()
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                _collect(done, rows, counts, times, num_clips)
                flush()
        except BaseException:
            for future in running:
                future.cancel()
            flush(final=True)  # what finished is kept: a rerun resumes after it
            raise
    flush(final=True)
    return times


def _collect(done, rows: list, counts: dict, times: StageTimes, num_clips: int) -> None:
    """The finished requests' rows; a failure of the server or the connection is raised (after the others are kept)."""
    failure = None
    for future in done:
        try:
            row, seconds = future.result()
        except BaseException as exc:  # noqa: BLE001  kept until the finished rows are in
            failure = failure or exc
            continue
        rows.append(row)
        times.inference += seconds
        if row["error"] is None:
            counts["clips"] += num_clips
        else:
            counts["failed"] += 1
    if failure is not None:
        raise failure
