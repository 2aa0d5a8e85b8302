"""The ``vivit-deploy`` command line.

Every expected failure (bad file, bad checkpoint, bad option) ends with one readable line on stderr
and a non-zero exit code; a traceback means a bug in vivit_deploy.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from pathlib import Path

import click

from vivit_deploy.config import PRESETS
from vivit_deploy.errors import VivitDeployError


def _friendly_errors(fn):
    """Turn our errors (and missing files) into click's one-line ``Error: ...`` and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (VivitDeployError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vivit-deploy")
def main() -> None:
    """ViViT from a PyTorch checkpoint to production: predict, classify, export, build-engine, check-trt, compare,
    bench, triton-repo."""


class _Stopwatch:
    """Progress lines on stderr, each with the seconds since the command started."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        click.echo(f"[{time.perf_counter() - self.started:6.1f} s] {message}", err=True)


def _runtime_options(source: str, backend: str | None, attn_implementation: str | None, revision, offline) -> dict:
    """Options only the PyTorch backend takes, passed only when it is the one chosen."""
    from vivit_deploy.runtimes import backend_for

    if (backend or backend_for(source)) != "torch":
        return {}
    options = {"revision": revision, "local_files_only": offline or None}
    if attn_implementation:
        options["attn_implementation"] = attn_implementation
    return options


_BACKEND = click.option("--backend", type=click.Choice(["torch", "onnxruntime", "openvino", "tensorrt", "triton"]), default=None,
                        help="Default: from --model (.onnx -> onnxruntime, .engine/.plan -> tensorrt, "
                             "checkpoint dir or Hub id -> torch); openvino runs an .onnx file on the CPU.")
_DEVICE = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")

def _options(*decorators):
    """Several click options as one decorator, for the ones predict and classify share."""
    def apply(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn
    return apply


_MODEL = click.option("--model", "source", default=None,
                      help="Checkpoint directory, Hub id, exported .onnx, TensorRT .engine, or "
                           "triton://host:port/MODEL. Default: the demo model.")
_PRECISION = click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
                          help="Compute precision: PyTorch's, or what OpenVINO computes in (fp32, bf16); ONNX Runtime "
                               "and TensorRT run a file in the precision it was exported in.")
_SAMPLING = _options(
    click.option("--clips", "num_clips", default=1, show_default=True, type=click.IntRange(min=1),
                 help="Temporal clips per video; their logits are averaged (the paper uses 4)."),
    click.option("--sampling", type=click.Choice(["uniform", "stride"]), default="uniform", show_default=True,
                 help="uniform: frames spread over the video (or each clip's segment); stride: every Nth frame."),
    click.option("--frame-sample-rate", default=4, show_default=True, type=click.IntRange(min=1),
                 help="N for --sampling stride."),
)
_TORCH_SOURCE = _options(
    click.option("--attn", "attn_implementation", type=click.Choice(["sdpa", "eager"]), default=None,
                 help="Attention of the PyTorch backend [default: sdpa]."),
    click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of --model."),
    click.option("--offline", is_flag=True, help="Use only the local Hugging Face cache (like HF_HUB_OFFLINE=1)."),
)



@main.command()
@click.argument("videos", nargs=-1, type=click.Path(path_type=Path))
@_MODEL
@_BACKEND
@_DEVICE
@_PRECISION
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="How many labels to print.")
@_SAMPLING
@_TORCH_SOURCE
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_friendly_errors
def predict(videos, source, backend, device, precision, top_k, num_clips, sampling, frame_sample_rate,
            attn_implementation, revision, offline, as_json):
    """Classify VIDEOS (default: the bundled sample video) and print the top-k labels."""
    from vivit_deploy.demo import default_sample, demo_model_dir, sample_videos
    from vivit_deploy.predict import VideoClassifier

    truth = {path.resolve(): label for path, label in sample_videos()}
    if source is None:
        source = str(demo_model_dir())
        if not videos:
            videos = (default_sample(),)
    elif not videos:
        raise click.UsageError("give at least one video to classify with --model (the bundled samples suit only the demo model)")

    progress = _Stopwatch()
    progress(f"loading {source} ...")
    options = _runtime_options(source, backend, attn_implementation, revision, offline)
    classifier = VideoClassifier.from_pretrained(source, backend, device=device, precision=precision, **options)
    runtime = classifier.runtime
    progress(f"{runtime.backend} on {runtime.device} ({runtime.precision}); classifying {len(videos)} video(s)")
    results = []
    with classifier:
        for video in videos:
            predictions = classifier.classify(
                video, top_k=top_k, num_clips=num_clips, sampling=sampling, frame_sample_rate=frame_sample_rate
            )
            entry = {"video": str(video), "predictions": [p.to_dict() for p in predictions]}
            label = truth.get(Path(video).resolve())
            if label is not None and label in classifier.id2label.values():
                entry["true_label"] = label
            results.append(entry)
            if not as_json:
                known = f"  (true label: {entry['true_label']})" if "true_label" in entry else ""
                click.echo(f"{video}{known}")
                for rank, p in enumerate(predictions, 1):
                    click.echo(f"  {rank}. {p.label:<24} {p.probability:7.2%}")
    if as_json:
        json.dump(results, sys.stdout, indent=2)
        click.echo()


@contextlib.contextmanager
def _classify_bar(total: int):
    """A bar over videos on stderr, with videos/s and clips/s since the first video started."""
    started = time.perf_counter()
    counts = [0, 0]

    def rate(_item) -> str:
        seconds = max(time.perf_counter() - started, 1e-9)
        return f"{counts[0] / seconds:.1f} videos/s, {counts[1] / seconds:.1f} clips/s"

    with click.progressbar(length=total, label="classifying", file=sys.stderr, show_pos=True, show_eta=True,
                           item_show_func=rate, width=24) as bar:
        def update(videos: int, clips: int) -> None:
            counts[0] += videos
            counts[1] += clips
            bar.update(videos, current_item=True)

        yield update


def _ray_address(value: str | None) -> str | None:
    if value is not None and value != "local" and Path(value).exists():
        raise click.UsageError(f"--ray takes a Ray address, not a path ({value}): put the videos before --ray, "
                               "or write --ray=ADDRESS")
    return value


@main.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Results file: .parquet (needs pyarrow) or .jsonl. Rerunning resumes it.")
@_MODEL
@_BACKEND
@_DEVICE
@_PRECISION
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decoding processes [default: every core; with a GPU, every core but one]. "
                   "With --ray: decoding tasks at once [default: as many as the cluster's CPUs allow].")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Clips per inference call.")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="Labels per row.")
@_SAMPLING
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run on Ray (pip install 'vivit-deploy[ray]'): --ray alone starts a local Ray, --ray=ADDRESS "
                   "joins a cluster ('auto', host:port, ray://host:port).")
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="With --ray: inference actors [default: one per GPU of the cluster, else 1].")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Skip videos already in the output with the same settings; --no-resume starts over.")
@click.option("--retry-failed", is_flag=True, help="Classify again the videos whose rows have an error.")
@click.option("--strict", is_flag=True, help="Exit with code 1 when any video of the job has an error row.")
@click.option("--window", type=click.FloatRange(min=0, min_open=True), default=None,
              help="A timeline: a row per window of this many seconds of each video (its frames sampled as predict "
                   "samples a clip) instead of a row per video.")
@click.option("--hop", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --window: seconds between the starts of windows [default: the window, back to back].")
@click.option("--segments", is_flag=True,
              help="With --window: also merge consecutive windows of one label into segments (start, end, label, mean "
                   "probability), written to OUTPUT's name with .segments before the suffix.")
@_TORCH_SOURCE
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the job summary as JSON to this file ('-' for stdout instead of the text).")
@_friendly_errors
def classify(inputs, output, source, backend, device, precision, workers, batch_size, top_k, num_clips, sampling,
             frame_sample_rate, ray_address, actors, resume, retry_failed, strict, window, hop, segments,
             attn_implementation, revision, offline, json_path):
    """Classify every video of INPUTS into one results file, resumably, at full throughput.

    INPUTS are video files, directories (searched recursively) and manifests (.txt: a path per line;
    .csv / .parquet: a 'path' column). One row per video: path, label, probability, top_k, error and
    the settings that made it. A video that cannot be read is a row with its error; the job goes on.
    Rows are saved as they finish: a job that is stopped or killed loses at most the batch in flight,
    and the same command continues it.
    """
    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.pipeline import ClassifyJob, classify_corpus

    _writable(json_path, "--json")
    source = source or str(demo_model_dir())
    job = ClassifyJob(
        model=source, backend=backend, device=device, precision=precision, batch_size=batch_size, top_k=top_k,
        num_clips=num_clips, sampling=sampling, frame_sample_rate=frame_sample_rate, workers=workers,
        ray=_ray_address(ray_address), actors=actors, resume=resume, retry_failed=retry_failed,
        runtime_options=_runtime_options(source, backend, attn_implementation, revision, offline),
        window=window, hop=hop, segments=segments,
    )
    try:
        summary = classify_corpus(inputs, output, job, log=_Stopwatch(), bar=_classify_bar)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: finished batches are kept in {output}.parts; run the same command to "
                   "continue", err=True)
        sys.exit(130)
    _print_report(summary.format() + "\n", json.dumps(summary.to_dict(), indent=2) + "\n", json_path)
    if strict and summary.errors_in_output:
        raise click.ClickException(f"{summary.errors_in_output} of {summary.total} videos have an error row (--strict)")


@main.command()
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@_MODEL
@_BACKEND
@_DEVICE
@_PRECISION
@click.option("--window", default=2.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds of stream each window covers (sampled to the model's frames, as predict samples a file).")
@click.option("--hop", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds of stream between the ends of consecutive windows.")
@click.option("--smooth", default=3, show_default=True, type=click.IntRange(min=1),
              help="Windows in the smoothed label (the mean of their probabilities).")
@click.option("--min-probability", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Smoothed probability a label change needs to be announced.")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="Labels per window record.")
@click.option("--events", "events_path", default="-", show_default=True, type=click.Path(path_type=Path, allow_dash=True),
              help="Where the JSON Lines go: a file (appended to) or - for stdout.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this many seconds [default: when every stream has ended].")
@click.option("--reconnect/--no-reconnect", default=True, show_default=True,
              help="Reopen a live source that drops, with backoff; --no-reconnect ends that stream instead.")
@click.option("--realtime", is_flag=True, help="Read files at their own pace, as a camera delivers (default: as fast as "
                                               "they decode, every window classified).")
@_TORCH_SOURCE
@_friendly_errors
def stream(sources, source, backend, device, precision, window, hop, smooth, min_probability, top_k, events_path,
           duration, reconnect, realtime, attn_implementation, revision, offline):
    """Classify live streams in real time: a record per window and per event, as JSON Lines.

    SOURCE: rtsp:// (TCP by default; rtsp+udp:// for UDP), http(s)://, udp://, tcp://, a device (/dev/video0)
    or a video file; several share one runtime, their windows batched together. Every --hop seconds of
    stream time, each stream's last --window seconds are classified; when inference cannot keep up with a
    live stream, windows are skipped and counted, never queued. Dropped sources reconnect with backoff.
    Label changes and the summary go to stderr; SIGINT or SIGTERM end the run cleanly with the summary.
    """
    import signal

    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.runtimes import load_runtime
    from vivit_deploy.streaming import StreamClassifier, format_summary, label_change_line, parse_source

    parsed = [parse_source(s, realtime=realtime) for s in sources]  # a bad source fails before the model loads
    _writable(events_path, "--events")
    source = source or str(demo_model_dir())
    progress = _Stopwatch()
    progress(f"loading {source} ...")
    runtime = load_runtime(source, backend, device=device, precision=precision,
                           **_runtime_options(source, backend, attn_implementation, revision, offline))
    classifier = StreamClassifier(runtime, parsed, window=window, hop=hop, smooth=smooth, min_probability=min_probability,
                                  top_k=top_k, realtime=realtime, reconnect=reconnect, duration=duration)
    progress(f"{runtime.backend} on {runtime.device} ({runtime.precision}); following {len(parsed)} stream(s), "
             f"{window:g} s windows every {hop:g} s")
    stop = lambda signum, frame: classifier.stop()  # noqa: E731  (the iteration ends with the summary)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    out = sys.stdout if str(events_path) == "-" else open(events_path, "a", encoding="utf-8")
    try:
        with runtime:
            for record in classifier:
                out.write(json.dumps(record) + "\n")
                out.flush()
                event = record.get("event")
                if event == "label_changed":
                    click.echo(label_change_line(record), err=True)
                elif event in ("connected", "disconnected", "reconnected", "ended"):
                    detail = record.get("reason") or (f"{record.get('width')}x{record.get('height')} {record.get('codec')} "
                                                      f"{record.get('fps')} fps" if event != "ended" else "")
                    progress(f"{record['stream']}: {event}{': ' + str(detail) if detail else ''}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if out is not sys.stdout:
            out.close()
    click.echo(format_summary(classifier.summary()), err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The .onnx file to write.")
@click.option("--opset", default=None, type=click.IntRange(18, 23),
              help="ONNX opset [default: 18, the exporter's native one; 19 for fp8]. 20+ writes Gelu as one op.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "fp8"]), default="fp32", show_default=True,
              help="fp16: an fp16 graph with float32 input and logits (TensorRT's strongly typed builds); int8: "
                   "calibrated Q/DQ on the weight MatMuls (needs --calibration); fp8: the same in float8 e4m3fn, "
                   "for TensorRT on Hopper/Ada GPUs.")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="int8/fp8: a directory of videos like those the model will see, or an .npz from `compare "
                   "--save-inputs`, to calibrate on; fp16: the clips to validate on [default: random clips].")
@click.option("--calibration-clips", type=click.IntRange(min=1), default=None,
              help="How many clips of --calibration to use [default: 32].")
@click.option("--keep-fp32", "keep_fp32", default=None, metavar="auto|none|LAYERS",
              help="fp16/int8/fp8: keep these layers (2,5) or parts of them (2.attention, 2.mlp, 2.norms) in fp32; "
                   "auto: the fewest that make the file pass [default: none].")
@click.option("--min-cosine", type=click.FloatRange(-1, 1), default=None,
              help="The logits' cosine the file must keep against PyTorch fp32 [default: the precision's tolerance].")
@click.option("--smooth-quant", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True,
              help="int8/fp8: SmoothQuant's alpha, moving outlier channels of the MatMul inputs into the weights "
                   "(the same function in fp32); 0 turns it off.")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="Largest batch the file accepts [default: 32; 1 with --static-batch].")
@click.option("--static-batch", is_flag=True, help="Fix the batch axis to --max-batch instead of a dynamic axis.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of SOURCE.")
@click.option("--offline", is_flag=True, help="Use only the local Hugging Face cache (like HF_HUB_OFFLINE=1).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the export report as JSON to this file (also when the export is refused).")
@_friendly_errors
def export_command(source, output, opset, precision, calibration, calibration_clips, keep_fp32, min_cosine, smooth_quant,
                   max_batch, static_batch, revision, offline, json_path):
    """Export SOURCE (checkpoint directory or Hub id) to a validated ONNX file.

    The file carries the model config, labels and preprocessor config, so `vivit-deploy predict
    --model FILE` needs nothing else. It is checked (onnx.checker, graph hygiene) and run with ONNX
    Runtime at two batch sizes against PyTorch before it is written (an fp16 graph is also checked for
    products beyond fp16's range); on failure nothing is written, and the error names the first failing
    layer, what broke there and the --keep-fp32 option that fixes it.
    """
    from vivit_deploy.errors import ExportError
    from vivit_deploy.export import export_onnx

    _writable(json_path, "--json")
    progress = _Stopwatch()
    try:
        report = export_onnx(
            source, output, opset=opset, precision=precision, max_batch=max_batch, static_batch=static_batch,
            calibration=calibration, calibration_clips=calibration_clips, keep_fp32=keep_fp32, min_cosine=min_cosine,
            smooth_quant=smooth_quant, progress=progress, revision=revision, local_files_only=offline or None,
        )
    except ExportError as exc:
        refused = getattr(exc, "report", None)
        if refused is not None:
            click.echo(refused.format(), err=True)
            if json_path is not None:
                json_path.write_text(json.dumps(refused.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        raise
    click.echo(report.format())
    if json_path is not None:
        json_path.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")


main.add_command(export_command, name="export")


@main.command()
@click.option("--model", "source", default=None,
              help="The reference checkpoint (directory or Hub id), run in PyTorch fp32. Default: the demo model.")
@click.option("--onnx", "onnx_files", multiple=True, type=click.Path(path_type=Path),
              help="An exported .onnx file to compare with ONNX Runtime (repeatable).")
@click.option("--openvino", "openvino_files", multiple=True, type=click.Path(path_type=Path),
              help="An exported .onnx file to compare with OpenVINO (repeatable).")
@click.option("--openvino-precision", "openvino_precisions", multiple=True, type=click.Choice(["fp32", "bf16"]),
              help="What OpenVINO computes the --openvino files in (repeatable) [default: fp32].")
@click.option("--engine", "engine_files", multiple=True, type=click.Path(path_type=Path),
              help="A TensorRT engine from build-engine to compare (repeatable; needs TensorRT and a GPU).")
@click.option("--triton", "triton_urls", multiple=True, metavar="URL",
              help="A model on a Triton server, triton://host:port/MODEL (repeatable).")
@click.option("--torch", "torch_precisions", multiple=True, type=click.Choice(["fp16", "bf16"]),
              help="Also compare PyTorch at this precision (repeatable).")
@_DEVICE
@click.option("--videos", "videos_dir", type=click.Path(path_type=Path), default=None,
              help="Compare on one clip of each video in DIR (labels from DIR/labels.json when present).")
@click.option("--synthetic", type=click.IntRange(min=1), default=None,
              help="Compare on N labelled clips of the demo model's motion task (its held-out distribution).")
@click.option("--samples", type=click.IntRange(min=1), default=None, help="Compare on N random clips.")
@click.option("--demo", is_flag=True, help="Compare on the bundled labelled sample videos.")
@click.option("--inputs", "inputs_file", type=click.Path(path_type=Path), default=None,
              help="Compare on clips saved earlier with --save-inputs (.npz).")
@click.option("--save-inputs", type=click.Path(path_type=Path), default=None,
              help="Save the preprocessed clips (.npz) so another machine can compare on identical tensors.")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="With no candidate named: calibrate the int8 candidates on these videos (DIR) or clips (.npz) "
                   "[default for the demo model: synthetic clips no evaluation set uses].")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the report as JSON to this file ('-' for stdout).")
@click.option("--atol", type=click.FloatRange(min=0), default=None, help="Override every candidate's atol.")
@click.option("--rtol", type=click.FloatRange(min=0), default=None, help="Override every candidate's rtol.")
@click.option("--min-cosine", type=click.FloatRange(-1, 1), default=None, help="Override the minimum cosine similarity.")
@click.option("--min-top1", type=click.FloatRange(0, 1), default=None, help="Override the minimum top-1 agreement (0..1).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--layers", is_flag=True,
              help="Also per-layer drift: the hidden states of every layer against PyTorch fp32 hooks, the first layer "
                   "out of tolerance and what broke there (ONNX Runtime, OpenVINO and PyTorch candidates).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="With --layers: write a PNG of drift against depth (needs matplotlib: pip install 'vivit-deploy[bench]').")
@click.option("--offline", is_flag=True, help="Use only the local Hugging Face cache (like HF_HUB_OFFLINE=1).")
@_friendly_errors
def compare(source, onnx_files, openvino_files, openvino_precisions, engine_files, triton_urls, torch_precisions, device, videos_dir,
            synthetic, samples, demo, inputs_file, save_inputs, calibration, json_path, atol, rtol, min_cosine, min_top1,
            batch_size, layers, plot_path, offline):
    """How far each backend drifts from PyTorch fp32, and whether it still classifies the same.

    With no candidate named, every backend x precision that can run here is compared (ONNX Runtime
    fp32/fp16/int8, OpenVINO fp32/bf16/int8, PyTorch bf16, and on a GPU its fp16/bf16, ONNX Runtime's
    CUDA provider and TensorRT), exported into a temporary directory first.

    Exit code 0 when every candidate is within its tolerance (per precision, see
    vivit_deploy/accuracy/tolerances.py, or the overrides), 1 otherwise: a release pipeline can gate on it.
    """
    import importlib.util

    from vivit_deploy.accuracy.job import CompareOptions, run_compare

    if openvino_precisions and not openvino_files:
        raise click.UsageError("--openvino-precision applies to --openvino files")
    if plot_path is not None and not layers:
        raise click.UsageError("--plot draws the per-layer drift: add --layers")
    if plot_path is not None and importlib.util.find_spec("matplotlib") is None:
        raise click.UsageError("--plot needs matplotlib: pip install 'vivit-deploy[bench]'")
    for path, option in ((json_path, "--json"), (plot_path, "--plot")):
        _writable(path, option)
    options = CompareOptions(
        source=source, onnx=onnx_files, openvino=openvino_files, openvino_precisions=openvino_precisions or ("fp32",),
        engines=engine_files, triton=triton_urls, torch_precisions=torch_precisions, device=device, demo=demo, videos_dir=videos_dir,
        synthetic=synthetic, samples=samples, inputs_file=inputs_file, save_inputs=save_inputs, calibration=calibration,
        tolerance_overrides=dict(atol=atol, rtol=rtol, min_cosine=min_cosine, min_top1=min_top1),
        batch_size=batch_size, offline=offline, layers=layers, plot=plot_path,
    )
    report = run_compare(options, _Stopwatch())
    _print_report(report.format_table() + "\n", report.to_json(), json_path)
    if not report.passed:
        sys.exit(1)


@main.command("build-engine")
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The engine file to write.")
@click.option("--trt", "edition", type=click.Choice(["auto", "tensorrt", "rtx"]), default="auto", show_default=True,
              help="Which TensorRT builds it: auto = TensorRT 10/11 where it imports, else TensorRT for RTX (builds "
                   "without a GPU, for RTX/Ada/Ampere/Turing GPUs).")
@click.option("--compute-capability", "compute_capabilities", default=None, metavar="8.6,8.9,...",
              help="TensorRT for RTX: the GPU generations to build for (7.5, 8.0, 8.6, 8.9, 12.0, 12.1) [default: "
                   "8.0,8.6,8.9,12.0; for an fp8 graph 8.9,12.0].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "fp8"]), default=None,
              help="Engine precision [default: the graph's]. Strongly typed builds take it from the graph.")
@click.option("--min-batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--opt-batch", default=None, type=click.IntRange(min=1), help="Batch TensorRT tunes for [default: min(8, max)].")
@click.option("--max-batch", default=None, type=click.IntRange(min=1), help="[default: the ONNX file's own limit]")
@click.option("--workspace-gb", default=None, type=float, help="Builder workspace limit in GiB [default: TensorRT's].")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="TensorRT 10/11: read this timing cache if it exists and write it back after the build.")
@click.option("--optimization-level", default=None, type=click.IntRange(0, 5),
              help="TensorRT builder optimization level [default: TensorRT's, 3].")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the build report (edition, targets, memory, layers) as JSON to this file ('-' for stdout).")
@_friendly_errors
def build_engine_command(onnx_file, output, edition, compute_capabilities, precision, min_batch, opt_batch, max_batch,
                         workspace_gb, timing_cache, optimization_level, json_path):
    """Build a TensorRT engine from ONNX_FILE (written by vivit-export), with a sidecar JSON next to it.

    TensorRT 10/11 build on the GPU the engine will run on; TensorRT for RTX builds ahead of time on any
    machine, for the compute capabilities named. The report (and the sidecar) hold NVIDIA's own account
    of the build: edition, version, targets, weights and activation memory, the fused layers. A build
    that fails writes nothing and says why in one line.
    """
    from vivit_deploy.export.trt_build import build_engine

    _writable(json_path, "--json")
    report = build_engine(
        onnx_file, output, trt=edition, compute_capabilities=compute_capabilities, precision=precision,
        min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, workspace_gb=workspace_gb,
        timing_cache=timing_cache, optimization_level=optimization_level, progress=_Stopwatch(),
    )
    _print_report(report.format() + "\n", json.dumps(report.to_dict(), indent=2) + "\n", json_path)


@main.command("check-trt")
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "fp8"]), default=None,
              help="Engine precision to check for [default: the file's own, from its metadata].")
@click.option("--trt", "edition", type=click.Choice(["auto", "tensorrt", "rtx"]), default="auto", show_default=True,
              help="Whose ONNX parser reads the file: auto = TensorRT 10/11 where it imports, else TensorRT for RTX.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the report as JSON to this file ('-' for stdout).")
@_friendly_errors
def check_trt_command(onnx_file, precision, edition, json_path):
    """Check ONNX_FILE against TensorRT's ONNX parser and engine needs.

    NVIDIA's own parser reads the file where an edition of TensorRT imports (its errors verbatim, per
    node); beside it, static checks that need no TensorRT: operators against the parser's supported
    list, opset range, LayerNormalization as one op, the fusable attention pattern, tensor types, fp16
    graph with float32 I/O. Exit code 1 on a blocker.
    """
    from vivit_deploy.export.trt_compat import check_trt

    _writable(json_path, "--json")
    report = check_trt(onnx_file, precision, trt=edition)
    _print_report(report.format() + "\n", json.dumps(report.to_dict(), indent=2) + "\n", json_path)
    if not report.passed:
        sys.exit(1)


@main.command("triton-repo")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", "repository", required=True, type=click.Path(path_type=Path),
              help="The model repository directory (created if missing; existing models are never overwritten).")
@click.option("--name", default="vivit", show_default=True, help="The model's name; the ensemble is NAME_frames.")
@click.option("--platform", type=click.Choice(["tensorrt", "onnxruntime", "python"]), default=None,
              help="tensorrt_plan for an engine, onnxruntime_onnx for an .onnx file [default: by the file], or "
                   "python: vivit_deploy's own runtime inside Triton's python backend (CPU-only servers).")
@click.option("--kind", type=click.Choice(["gpu", "cpu"]), default=None,
              help="instance_group kind [default: gpu; cpu for --platform python on the CPU].")
@click.option("--instances", default=1, show_default=True, type=click.IntRange(min=1), help="Instances of each model.")
@click.option("--max-queue-delay-us", default=100, show_default=True, type=click.IntRange(min=0),
              help="How long the dynamic batcher waits to fill a batch.")
@click.option("--preferred-batch", default=None,
              help="Comma-separated preferred batch sizes [default: the engine's opt batch; none for ONNX].")
@click.option("--ensemble/--no-ensemble", default=True, show_default=True,
              help="Also write the uint8-frames preprocessing model and the ensemble that chains it to the model.")
@click.option("--ort-tensorrt", is_flag=True, help="ONNX Runtime's TensorRT accelerator (--platform onnxruntime --kind gpu).")
@click.option("--python-backend", type=click.Choice(["onnxruntime", "openvino", "tensorrt", "torch"]), default=None,
              help="--platform python: the runtime inside Triton [default: onnxruntime; tensorrt for an engine].")
@click.option("--python-device", default=None, help="--platform python: cpu or cuda [default: cuda for an engine, else cpu].")
@click.option("--python-precision", default=None, help="--platform python: the runtime's precision (e.g. OpenVINO bf16).")
@_friendly_errors
def triton_repo_command(source, repository, name, platform, kind, instances, max_queue_delay_us, preferred_batch,
                        ensemble, ort_tensorrt, python_backend, python_device, python_precision):
    """Write a Triton model repository for SOURCE: an engine (with its sidecar), an .onnx from vivit-export,
    or a checkpoint (exported to ONNX first).

    config.pbtxt comes from what the file knows (names, types, dims, batch range, labels) and is
    validated against Triton's own ModelConfig before anything is written. See docs/triton.md.
    """
    from vivit_deploy.serving.repository import write_repository

    preferred = None
    if preferred_batch:
        from vivit_deploy.bench import parse_batch_sizes

        preferred = list(parse_batch_sizes(preferred_batch))
    report = write_repository(
        source, repository, name=name, platform=platform, kind=kind, instances=instances,
        max_queue_delay_us=max_queue_delay_us, preferred_batch=preferred, ensemble=ensemble, ort_tensorrt=ort_tensorrt,
        python_backend=python_backend, python_device=python_device, python_precision=python_precision,
        progress=_Stopwatch(),
    )
    click.echo(report.format())


@contextlib.contextmanager
def _progress_bar(total: int):
    """One bar on stderr over every call of every backend, labelled with the backend being measured."""
    with click.progressbar(length=total, label="measuring", file=sys.stderr, show_pos=True, show_eta=True,
                           width=24) as bar:
        def advance(backend: str) -> None:
            bar.label = f"{backend:<18}"
            bar.update(1)

        yield advance


def _print_report(text: str, json_text: str, json_path: Path | None) -> None:
    """Print a command's report, or with ``--json -`` its JSON instead; ``--json FILE`` also writes the JSON there."""
    if json_path is not None and str(json_path) == "-":
        click.echo(json_text, nl=False)
        return
    click.echo(text, nl=False)
    if json_path is not None:
        json_path.write_text(json_text, encoding="utf-8")


def _writable(path: Path | None, option: str) -> None:
    if path is not None and str(path) != "-" and not path.parent.resolve().is_dir():
        raise click.UsageError(f"{option} {path}: the directory {path.parent} does not exist")


@main.command()
@click.option("--model", "source", default=None,
              help="Checkpoint directory or Hub id to measure. Default: the demo model.")
@click.option("--config", "config_preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="Measure this geometry with random weights instead (vivit-b-16x2: the real cost, no download).")
@click.option("--frames", "num_frames", type=click.IntRange(min=1), default=None,
              help="Frames per clip for --config (a cheaper ViViT-B on a CPU, e.g. 8).")
@click.option("--backends", default=None,
              help="Comma-separated, from: torch-eager, torch-sdpa, onnxruntime, openvino, tensorrt, transformers-eager, "
                   "transformers-sdpa. Default: torch-eager,torch-sdpa,onnxruntime,openvino,tensorrt, those that can run here.")
@click.option("--batch-sizes", default="1,2,4,8", show_default=True, help="Comma-separated batch sizes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", default="fp32", show_default=True,
              help="fp32, fp16, bf16, int8, int8-bf16 or fp8, or several comma-separated: every backend in each it "
                   "runs (fp16: fp16 ONNX graph and engine, half PyTorch; bf16: PyTorch and OpenVINO; int8: the "
                   "calibrated Q/DQ export on ONNX Runtime, OpenVINO, TensorRT; int8-bf16: OpenVINO, the rest in bf16; "
                   "fp8: TensorRT).")
@click.option("--calibration", type=click.Path(path_type=Path, exists=True), default=None,
              help="int8/fp8: calibrate the export on these videos (DIR) or clips (.npz) [default: synthetic clips "
                   "for the demo model, random clips otherwise, said in the report].")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0), help="Untimed calls per batch size.")
@click.option("--iters", default=10, show_default=True, type=click.IntRange(min=1), help="Timed calls per batch size.")
@click.option("--peers/--no-peers", default=True, show_default=True,
              help="Also measure transformers' model (eager, sdpa) and preprocessor, when transformers is installed.")
@click.option("--stages/--no-stages", default=True, show_default=True,
              help="Also time decode, preprocessing, inference and end to end on video files.")
@click.option("--videos", "videos_dir", type=click.Path(path_type=Path), default=None,
              help="Videos for the stages [default: the bundled sample videos].")
@click.option("--ceiling/--no-ceiling", default=True, show_default=True,
              help="Measure a matrix-product ceiling in the same run and show each backend's share of it.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the results as JSON to this file ('-' for stdout instead of the tables).")
@click.option("--markdown", "markdown_path", type=click.Path(path_type=Path), default=None,
              help="Also write the tables as markdown to this file (to paste into docs).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Write a PNG of throughput against batch size (needs matplotlib: pip install 'vivit-deploy[bench]').")
@click.option("--onnx", "onnx_file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Measure this file (from vivit-export, of the same model) with onnxruntime instead of exporting one.")
@click.option("--engine", "engine_file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Measure this engine (from build-engine, of the same model) with tensorrt instead of building one.")
@click.option("--offline", is_flag=True, help="Use only the local Hugging Face cache (like HF_HUB_OFFLINE=1).")
@_friendly_errors
def bench(source, config_preset, num_frames, backends, batch_sizes, device, precision, calibration, warmup, iters, peers,
          stages, videos_dir, ceiling, json_path, markdown_path, plot_path, onnx_file, engine_file, offline):
    """Latency, throughput and peak memory of every backend at each batch size, in one run.

    Each backend runs in a process of its own (its memory is its own); ratios between backends come
    from the same run. Prints markdown tables: latency percentiles, sdpa vs eager in the layout of
    the transformers ViViT doc, speedup over torch-sdpa, drift, ceiling, stages of predict. With
    several precisions (--precision fp32,bf16,int8), a backend x precision table: speedup over
    transformers' fp32 sdpa next to the drift from our fp32 model on identical input.
    """
    import importlib.util

    from vivit_deploy.bench import BenchSettings, parse_batch_sizes, parse_list, run_bench

    for path, option in ((json_path, "--json"), (markdown_path, "--markdown"), (plot_path, "--plot")):
        _writable(path, option)
    if plot_path is not None and importlib.util.find_spec("matplotlib") is None:
        raise click.UsageError("--plot needs matplotlib: pip install 'vivit-deploy[bench]'")
    videos = None
    if videos_dir is not None:
        from vivit_deploy.accuracy.inputs import videos_in

        videos = [path for path, _ in videos_in(videos_dir)]
        if not videos:
            raise click.UsageError(f"--videos {videos_dir}: no video files in it")
    settings = BenchSettings(
        source=source, config=config_preset, num_frames=num_frames,
        backends=None if backends is None else parse_list(backends, "--backends"),
        batch_sizes=parse_batch_sizes(batch_sizes), device=device, precision=precision,
        warmup=warmup, iters=iters, peers=peers, stages=stages, ceiling=ceiling, offline=offline,
        onnx=onnx_file, engine=engine_file, calibration=calibration,
    )
    report = run_bench(settings, progress=_Stopwatch(), bar=_progress_bar, videos=videos)
    markdown = report.to_markdown()
    _print_report(markdown, report.to_json(), json_path)
    if markdown_path is not None:
        markdown_path.write_text(markdown, encoding="utf-8")
    if plot_path is not None:
        report.plot(plot_path)
    if report.failed:
        raise click.ClickException("; ".join(f"{name} failed: {why}" for name, why in report.failed.items()))

if __name__ == "__main__":
    main()
