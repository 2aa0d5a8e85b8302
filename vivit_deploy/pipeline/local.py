"""The corpus job on one machine: decoding processes feeding batched inference, with bounded queues.

    main thread:      items -> DecodePool (N processes: ClipLoader.load) -> batches of clips
    inference thread: batch -> classify_videos -> result rows -> ResultStore.write_part

Decoding runs in processes (``spawn``), not threads: a decoder that crashes on a malformed file
takes down only its worker, whose video becomes a row with the error, and a replacement starts.
Each worker holds at most ``prefetch`` videos and the inference queue at most two batches, so memory
stays flat however large the corpus; while inference is the slower stage the workers wait (and leave
the cores to it), while decoding is, inference waits.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from vivit_deploy.errors import VivitDeployError
from vivit_deploy.pipeline.inputs import VideoItem
from vivit_deploy.pipeline.stages import ClipLoader, ResultSettings, classify_rows, error_line
from vivit_deploy.video.decoding import available_cores

if TYPE_CHECKING:
    from vivit_deploy.pipeline.results import ResultStore
    from vivit_deploy.runtimes.base import Runtime

Progress = Callable[[int, int], None]  # (videos finished, clips run) since the last call


@dataclass
class StageTimes:
    """Seconds per stage; decode and preprocess are summed over the workers that ran in parallel."""

    decode: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    write: float = 0.0
    videos: int = 0
    clips: int = 0
    failed: int = 0
    workers: dict[str, Any] = field(default_factory=dict)

    def write_part(self, store: "ResultStore", rows: list[dict[str, Any]], clips: int, failed: int,
                   progress: Progress | None) -> None:
        """Write a finished batch's rows as one part and count it: how every executor ends a batch."""
        started = time.perf_counter()
        store.write_part(rows)
        self.write += time.perf_counter() - started
        self.videos += len(rows)
        self.clips += clips
        self.failed += failed
        if progress is not None:
            progress(len(rows), clips)


@dataclass
class Decoded:
    item: VideoItem
    pixel_values: np.ndarray | None  # (num_clips, T, C, H, W) float32, None when ``error``
    error: str | None
    decode_s: float = 0.0
    preprocess_s: float = 0.0
    damaged_frames: int = 0


# ---- decoding processes --------------------------------------------------------------------------

def _worker_main(conn, loader: ClipLoader, threads: int) -> None:
    """A decoding process: (seq, path, frames | None) in, (seq, Loaded | None, error | None) out; ``frames`` are a
    timeline window's frame indices."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    import numba

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        loader.warm_up()
    except Exception:  # noqa: BLE001  the first video will report whatever this was
        pass
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if task is None:
            return
        seq, path, frames = task
        try:
            message = (seq, loader.load(path) if frames is None else loader.load(path, frames), None)
        except Exception as exc:  # any failure on one video is that video's row, never the end of the job
            message = (seq, None, error_line(exc))
        try:
            conn.send(message)
        except (BrokenPipeError, OSError):
            return


@contextlib.contextmanager
def _main_module_hidden():
    """Start processes without re-running the caller's ``__main__`` in them.

    ``spawn`` re-imports the parent's main script in every child so that objects defined there can be
    unpickled. The workers need nothing from it, and re-running it breaks a script without an
    ``if __name__ == "__main__":`` guard (each worker would start the job again) and a program read
    from stdin or ``-c`` (there is no file to import).
    """
    main = sys.modules.get("__main__")
    saved = {name: getattr(main, name) for name in ("__file__", "__spec__") if hasattr(main, name)}
    try:
        if "__file__" in saved:
            del main.__file__
        if "__spec__" in saved:
            main.__spec__ = None
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


class WorkerCrashError(VivitDeployError, RuntimeError):
    """Decoding processes die before they finish any video: the environment, not a video, is at fault."""


class DecodePool:
    """``workers`` processes running ``loader.load``; ``map_unordered`` yields results as they finish.

    A worker that dies (a crash in a native decoder, the OOM killer) is replaced and its video given to
    another worker once more; a video that kills two workers becomes a failed row with the reason, the
    videos queued behind it go to the others. Workers that die before any video has been decoded
    point at the environment, not at a video: the job stops with :class:`WorkerCrashError` then.
    """

    def __init__(self, loader: ClipLoader, workers: int, *, prefetch: int = 2, threads_per_worker: int = 1):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.loader = loader
        self.workers = workers
        self.prefetch = prefetch
        self.threads = threads_per_worker
        self._ctx = multiprocessing.get_context("spawn")  # never fork a process that holds torch/OpenMP threads
        self._procs: list[Any] = [None] * workers
        self._conns: list[Any] = [None] * workers
        self.restarts = 0
        self._closed = False
        self._decoded_any = False
        self._deaths: collections.Counter[str] = collections.Counter()  # per video path

    def __enter__(self) -> "DecodePool":
        for w in range(self.workers):
            self._start(w)
        return self

    def _start(self, w: int) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child, self.loader, self.threads),
                                 name=f"vivit-decode-{w}", daemon=True)
        with _main_module_hidden():
            proc.start()
        child.close()
        self._procs[w], self._conns[w] = proc, parent

    def map_unordered(self, items: Iterable[VideoItem]) -> Iterator[Decoded]:
        source = iter(items)
        retry: collections.deque[VideoItem] = collections.deque()  # to run again, before new items
        outstanding = [collections.deque() for _ in range(self.workers)]
        exhausted = False
        seq = 0
        while True:
            while not exhausted or retry:
                w = min(range(self.workers), key=lambda i: len(outstanding[i]))
                if len(outstanding[w]) >= self.prefetch:
                    break
                if retry:
                    item = retry.popleft()
                else:
                    item = next(source, None)
                    if item is None:
                        exhausted = True
                        continue
                seq += 1
                self._conns[w].send((seq, item.path, None if item.window is None else item.window.frames))
                outstanding[w].append((seq, item))
            if not any(outstanding):
                return
            busy = [w for w in range(self.workers) if outstanding[w]]
            handles = {self._conns[w]: w for w in busy} | {self._procs[w].sentinel: w for w in busy}
            for handle in wait(list(handles)):
                w = handles[handle]
                if handle is self._conns[w]:
                    yield from self._receive(w, outstanding[w])
                elif not self._procs[w].is_alive():
                    yield from self._drain(w, outstanding[w])
                    queued = [item for _, item in outstanding[w]]
                    outstanding[w].clear()
                    if queued:
                        yield from self._blame(queued[0], self._procs[w].exitcode, retry)
                        retry.extend(queued[1:])
                    self._conns[w].close()
                    self._start(w)
                    self.restarts += 1

    def _blame(self, item: VideoItem, code: int | None, retry: collections.deque) -> Iterator[Decoded]:
        """A worker died reading ``item``: try it once more, then fail it (or stop, if no worker ever got far)."""
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        self._deaths[item.key] += 1
        if not self._decoded_any and sum(self._deaths.values()) > 2 * self.workers + 1:
            raise WorkerCrashError(
                f"the decoding processes died {sum(self._deaths.values())} times ({how}) before decoding any "
                f"video, the last while reading {item.path}; see their messages above"
            )
        if self._deaths[item.key] < 2 or not self._decoded_any:
            retry.appendleft(item)
        else:
            yield Decoded(item, None, f"the decoding process died ({how}) while reading this video, twice")

    def _receive(self, w: int, pending: collections.deque) -> Iterator[Decoded]:
        try:
            seq, loaded, error = self._conns[w].recv()
        except (EOFError, OSError):
            return  # the worker died: its sentinel says so next
        expected, item = pending.popleft()
        if seq != expected:
            raise RuntimeError(f"decoding worker {w} answered task {seq}, expected {expected}")
        self._decoded_any = True
        if loaded is None:
            yield Decoded(item, None, error)
        else:
            yield Decoded(item, loaded.pixel_values, None, loaded.decode_s, loaded.preprocess_s, loaded.damaged_frames)

    def _drain(self, w: int, pending: collections.deque) -> Iterator[Decoded]:
        """Results a dead worker sent before it died."""
        while pending:
            try:
                if not self._conns[w].poll():
                    return
            except (EOFError, OSError):
                return
            before = len(pending)
            yield from self._receive(w, pending)
            if len(pending) == before:
                return

    def close(self, graceful: bool = True) -> None:
        """Stop the workers: let them finish the video in hand (up to 5 s) or, after an error, kill them."""
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            if conn is not None:
                try:
                    conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
        deadline = time.monotonic() + (5 if graceful else 0)
        for proc in self._procs:
            if proc is not None:
                proc.join(max(0.0, deadline - time.monotonic()))
                if proc.is_alive():
                    proc.kill()  # busy with a long video: what it was doing is not needed any more
                    proc.join()
        for conn in self._conns:
            if conn is not None:
                conn.close()

    def __exit__(self, exc_type, *exc_info: Any) -> None:
        self.close(graceful=exc_type is None)


# ---- the local executor --------------------------------------------------------------------------

class _Inference(threading.Thread):
    """Runs batches and writes their rows as parts; stops after the batch in hand when told to.

    On a CPU the decoding processes and inference share the cores. While inference is the slower
    stage (a batch is already waiting when one finishes) it gets every core's thread; while decoding is
    (inference waits for batches), one thread, so that it does not stall on cores the decoders hold
    (a one-off comparison on 2 cores with the demo model favoured it). Only backends that can change
    threads while running take part.
    """

    def __init__(self, runtime: "Runtime", store: "ResultStore", settings: ResultSettings, batch_size: int,
                 progress: Progress | None, times: StageTimes):
        super().__init__(name="vivit-inference", daemon=True)
        self.runtime, self.store, self.settings = runtime, store, settings
        self.batch_size, self.progress, self.times = batch_size, progress, times
        self.jobs: queue.Queue = queue.Queue(maxsize=2)
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self.cores = available_cores()
        self.threads: int | None = None
        self.original_threads: int | None = None
        self.starved = 0  # batches in a row that found no next batch waiting

    def submit(self, decoded: list[Decoded] | None) -> None:
        while True:
            if self.failure is not None:
                raise self.failure
            try:
                self.jobs.put(decoded, timeout=0.2)
                return
            except queue.Full:
                continue

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                batch = self.jobs.get()
                if batch is None:
                    return
                try:
                    self._adapt_threads()
                    self._run_batch(batch)
                except BaseException as exc:  # handed to the main thread, which stops the job
                    self.failure = exc
                    return
        finally:
            if self.original_threads is not None:
                self.runtime.set_threads(self.original_threads)

    def _adapt_threads(self) -> None:
        self.starved = 0 if self.jobs.qsize() else min(self.starved + 1, 2)
        want = 1 if self.starved >= 2 else self.cores
        if want != self.threads:
            previous = self.runtime.set_threads(want)
            if previous is not None and self.original_threads is None:
                self.original_threads = previous
            self.threads = want

    def _run_batch(self, batch: list[Decoded]) -> None:
        times = self.times
        rows, seconds = classify_rows(self.runtime, self.settings, self.batch_size,
                                      [(d.item.path, d.item.window, d.pixel_values, d.error, d.damaged_frames)
                                       for d in batch])
        times.inference += seconds
        ok = [d for d in batch if d.error is None]
        clips = sum(len(d.pixel_values) for d in ok)
        times.decode += sum(d.decode_s for d in batch)
        times.preprocess += sum(d.preprocess_s for d in batch)
        times.write_part(self.store, rows, clips, len(batch) - len(ok), self.progress)


def start_pool(loader: ClipLoader, workers: int) -> DecodePool:
    """Start the decoding processes (they import and warm up in the background: start them first)."""
    threads = max(1, available_cores() // workers)
    loader.decode_threads = threads
    return DecodePool(loader, workers, threads_per_worker=threads).__enter__()


def run_local(
    items: list[VideoItem],
    pool: DecodePool,
    runtime: "Runtime",
    store: "ResultStore",
    settings: ResultSettings,
    *,
    batch_size: int,
    progress: Progress | None = None,
) -> StageTimes:
    """Classify ``items`` through a started ``pool`` and write their rows to ``store`` as parts.

    The pool is closed on return; the caller finalizes the store.
    """
    times = StageTimes()
    times.workers = {"processes": pool.workers, "threads_each": pool.threads}
    inference = _Inference(runtime, store, settings, batch_size, progress, times)
    inference.start()
    try:
        batch: list[Decoded] = []
        clips = 0
        for decoded in pool.map_unordered(items):
            batch.append(decoded)
            clips += 0 if decoded.pixel_values is None else len(decoded.pixel_values)
            if clips >= batch_size or len(batch) >= 2 * batch_size:  # errors ride along with a batch
                inference.submit(batch)
                batch, clips = [], 0
        if batch:
            inference.submit(batch)
        inference.submit(None)
        inference.join()
        pool.close()
    except BaseException:
        pool.close(graceful=False)
        inference.stop.set()  # finish (and write) the batch in hand, drop the queued ones
        _clear(inference.jobs)
        inference.jobs.put(None)
        inference.join()
        raise
    finally:
        times.workers["restarts"] = pool.restarts
    if inference.failure is not None:
        raise inference.failure
    return times


def _clear(jobs: queue.Queue) -> None:
    while True:
        try:
            jobs.get_nowait()
        except queue.Empty:
            return
