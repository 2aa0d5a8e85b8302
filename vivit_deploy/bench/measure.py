"""Measuring one backend, in a child process of its own.

A child per backend keeps the backends apart: its peak memory is that backend's alone, and one
backend's crash, leak or allocator state cannot touch the next. Within a child the batch sizes run
in ascending order: warm-up calls (excluded), then timed calls. On a GPU each call is timed with CUDA
events on the stream; on the CPU with the host clock. The logits of the first batch's input come back
too, so the parent can say how far each backend drifts from the reference on identical input.
"""

from __future__ import annotations

import queue as queue_module
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from vivit_deploy.bench.plan import BENCH_BACKENDS
from vivit_deploy.errors import VivitDeployError, first_line

Tick = Callable[[], None]
# Warm-up lasts --warmup calls and at least this long: an idle GPU takes a moment to raise its clocks,
# and a first batch timed before that shows slow outliers in its mean and p99 (seen on an H100).
MIN_WARMUP_S = 0.5


@dataclass(frozen=True)
class Job:
    """What a child measures (plain data: it crosses a process boundary)."""

    backend: str
    target: str  # checkpoint directory, .onnx or .engine
    device: str
    precision: str
    batch_sizes: tuple[int, ...]
    warmup: int
    iters: int
    seed: int
    offline: bool = False
    merge_tokens: int | tuple[int, ...] | None = None  # our PyTorch model merges tokens (ToMe); transformers' does not


def latency_stats(seconds: list[float], batch: int) -> dict[str, float]:
    """mean / p50 / p90 / p99 / min in milliseconds, and clips per second from the mean."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    mean = float(ms.mean())
    return {
        "mean_ms": mean, "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)), "min_ms": float(ms.min()), "clips_per_s": batch / (mean / 1e3),
    }


def clip_batch(frame_shape: tuple[int, ...], batch: int, seed: int) -> np.ndarray:
    """Random float32 clips (not zeros: zeros can run faster than real data and hide wrong results)."""
    return np.random.default_rng(seed).standard_normal((batch, *frame_shape), dtype=np.float32)


def reset_peak_rss() -> None:
    """Restart this process's peak-RSS mark (Linux: write 5 to /proc/self/clear_refs), so each batch size
    reports its own peak; elsewhere the mark only grows, and batches run smallest first."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB. On Linux VmHWM, which starts afresh at exec;
    getrusage's ru_maxrss would carry the parent's peak into a spawned child."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


# ---- one class per way of calling a backend ---------------------------------------------------------

class _Runner:
    """Load a backend, make its input, call it, read logits, report memory."""

    timed: str  # what one timed call covers, for the report
    frame_shape: tuple[int, ...]  # (T, C, H, W) of one clip

    def __init__(self, job: Job):
        self.job = job
        self.cuda = job.device.startswith("cuda")
        self._baseline = 0
        if self.cuda:
            import torch

            from vivit_deploy.runtimes.base import device_index

            torch.cuda.set_device(device_index(job.device))  # cuda:N: allocator stats and events on that GPU
            torch.cuda.synchronize()
            free, total = torch.cuda.mem_get_info()
            self._baseline = total - free  # the CUDA context and whatever else was there before loading

    def make_input(self, batch: int) -> Any:
        return clip_batch(self.frame_shape, batch, self.job.seed + batch)

    def __call__(self, x: Any) -> Any:
        raise NotImplementedError

    def logits(self, x: Any) -> np.ndarray:
        out = self(x)
        return out if isinstance(out, np.ndarray) else out.float().cpu().numpy()

    # memory: peak RSS of this process on the CPU; on a GPU, overridden per kind of allocator
    memory_kind = "peak resident memory of the backend's process"

    def reset_peak(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()

    def peak_mb(self) -> float:
        if not self.cuda:
            return peak_rss_mb()
        import torch

        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        return (total - free - self._baseline) / 2**20

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class _TorchModelRunner(_Runner):
    """Our model or transformers': the module's forward on a tensor already on the device, in its dtype."""

    timed = "model forward on a tensor already on the device"

    def __init__(self, job: Job):
        super().__init__(job)
        import torch

        from vivit_deploy.model.checkpoint import load_config
        from vivit_deploy.runtimes.torch_runtime import torch_dtype

        spec = BENCH_BACKENDS[job.backend]
        self.dtype = torch_dtype(job.precision)
        if spec.peer:
            import transformers

            transformers.utils.logging.disable_progress_bar()

            try:
                self.model = transformers.AutoModelForVideoClassification.from_pretrained(  # ViViT, VideoMAE, TimeSformer
                    job.target, attn_implementation=spec.attn_implementation, local_files_only=True,
                ).to(device=job.device, dtype=self.dtype).eval()
            except ValueError as exc:
                if "does not support an attention implementation" not in str(exc):
                    raise
                from vivit_deploy.errors import BackendUnavailableError

                raise BackendUnavailableError(f"transformers offers no {spec.attn_implementation} path for this model "
                                              "(TimeSformer's is eager only): its eager peer is the reference") from None
            self.version = f"transformers {transformers.__version__}"
        else:
            from vivit_deploy.model.checkpoint import load_model

            self.model = load_model(job.target, attn_implementation=spec.attn_implementation, head="classification",
                                    dtype=self.dtype, device=job.device, local_files_only=job.offline or None)
            if job.merge_tokens is not None:
                self.model.set_token_merging(job.merge_tokens)
            self.version = "vivit_deploy"
        self.frame_shape = load_config(job.target).input_shape
        self.peer = spec.peer
        self._torch = torch
        if self.cuda:
            self.memory_kind = "PyTorch allocator peak (torch.cuda.max_memory_allocated)"

    def make_input(self, batch: int):
        return self._torch.from_numpy(super().make_input(batch)).to(self.job.device, self.dtype)

    def __call__(self, x):
        with self._torch.inference_mode():
            return self.model(pixel_values=x).logits

    def peak_mb(self) -> float:
        if self.cuda:
            return self._torch.cuda.max_memory_allocated() / 2**20
        return super().peak_mb()

    def describe(self) -> dict[str, Any]:
        return {"implementation": self.version, "torch": self._torch.__version__}


class _RuntimeRunner(_Runner):
    """A vivit_deploy runtime (ONNX Runtime, TensorRT) loaded from its file."""

    def __init__(self, job: Job):
        super().__init__(job)
        from vivit_deploy.runtimes import load_runtime

        # ONNX Runtime and TensorRT run a file in its own precision; OpenVINO is told what to compute in
        runs = BENCH_BACKENDS[job.backend].runs
        self.runtime = load_runtime(job.target, runs.backend, device=job.device,
                                    precision=runs.load_precision(job.precision))
        self.frame_shape = self.runtime.input_spec.frame_shape
        if self.cuda:
            self.memory_kind = "device memory in use after the runs, above the CUDA context (cudaMemGetInfo)"

    def describe(self) -> dict[str, Any]:
        info = {k: v for k, v in self.runtime.describe().items() if k in ("provider", "tensorrt", "gpu")}
        memory = self.runtime.device_memory_mb()
        if memory is not None:
            info["engine_activation_mb"] = memory
        return {**info, **type(self.runtime).library_versions()}

    def close(self) -> None:
        self.runtime.close()


class _NumpyRunner(_RuntimeRunner):
    """ONNX Runtime and OpenVINO: numpy arrays in and out."""

    timed = "Runtime.run: numpy in and out (on a GPU the host-device copies are included)"

    def __call__(self, x):
        return self.runtime.run(x)


class _TrtRunner(_RuntimeRunner):
    """An engine: its buffers are on the GPU, so the timed call takes a tensor already there (``Runtime.run_torch``)."""

    timed = "Runtime.run_torch on a tensor already on the device"

    def make_input(self, batch: int):
        import torch

        return torch.from_numpy(super().make_input(batch)).to(self.runtime.device)

    def __call__(self, x):
        return self.runtime.run_torch(x)


def _runner(job: Job) -> _Runner:
    kind = BENCH_BACKENDS[job.backend].artifact
    if kind == "checkpoint":
        return _TorchModelRunner(job)
    return _NumpyRunner(job) if kind == "onnx" else _TrtRunner(job)


# ---- the measurement ---------------------------------------------------------------------------------

def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "failed to allocate" in text


def time_calls(call: Callable[[Any], Any], x: Any, iters: int, cuda: bool, tick: Tick) -> list[float]:
    """Seconds per call: CUDA events around each call on a GPU (read after one synchronize), else the host clock."""
    if cuda:
        import torch

        events = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call(x)
            end.record()
            events.append((start, end))
            tick()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) / 1e3 for start, end in events]
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - started)
        tick()
    return times


def measure(job: Job, tick: Tick = lambda: None) -> dict[str, Any]:
    """Load ``job.backend``, then per batch size: warm-up, timed calls, peak memory. Plain data out."""
    runner = _runner(job)
    rows: list[dict[str, Any]] = []
    probe = None
    try:
        for batch in job.batch_sizes:
            try:
                x = runner.make_input(batch)
                runner.reset_peak()
                warm_until = time.perf_counter() + MIN_WARMUP_S
                for _ in range(job.warmup):
                    runner(x)
                    tick()
                while job.warmup and time.perf_counter() < warm_until:  # clocks ramp up, caches fill
                    runner(x)
                    if runner.cuda:
                        import torch

                        torch.cuda.synchronize()
                if probe is None:
                    probe = runner.logits(x)
                times = time_calls(runner, x, job.iters, runner.cuda, tick)
                rows.append({"batch": batch, **latency_stats(times, batch), "peak_mb": runner.peak_mb()})
            except Exception as exc:
                if not _is_out_of_memory(exc):
                    raise
                rows.append({"batch": batch, "error": "out of memory"})
                break  # larger batches need more
            finally:
                x = None
                if runner.cuda:
                    import torch

                    torch.cuda.empty_cache()
        return {
            "backend": job.backend, "rows": rows, "timed": runner.timed, "memory_kind": runner.memory_kind,
            "probe_logits": None if probe is None else np.asarray(probe, dtype=np.float32).tolist(),
            "details": runner.describe(),
        }
    finally:
        runner.close()


def _child(job: Job, events) -> None:
    """Entry point of the child process: ticks while it runs, then ("done", result) or ("error", message)."""
    try:
        events.put(("done", measure(job, tick=lambda: events.put(("tick", None)))))
    except VivitDeployError as exc:
        events.put(("error", str(exc)))
    except BaseException as exc:  # report, never hang the parent
        last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" (at {last.filename}:{last.lineno})" if last else ""
        events.put(("error", f"{type(exc).__name__}: {first_line(exc)}{where}"))


def measure_in_child(job: Job, tick: Tick) -> dict[str, Any]:
    """Run :func:`measure` in a fresh spawned process; a failure comes back as {"error": message}."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    process = context.Process(target=_child, args=(job, events), daemon=True)
    process.start()
    try:
        while True:
            try:
                kind, payload = events.get(timeout=0.5)
            except queue_module.Empty:
                if not process.is_alive():
                    return {"backend": job.backend, "error": f"its process ended without a result (exit code {process.exitcode}; "
                                                               "killed for memory?)"}
                continue
            if kind == "tick":
                tick()
            elif kind == "done":
                return payload
            else:
                return {"backend": job.backend, "error": payload}
    finally:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()

