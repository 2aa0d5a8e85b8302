"""`vivit-deploy classify`: a corpus of videos (or their timelines) into one results file."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import click

from vivit_deploy.cli.common import (
    BACKEND, DEVICE, MODEL, PRECISION, READING, SAMPLING, TORCH_SOURCE, Stopwatch, friendly_errors, print_report,
    read_options, runtime_options, writable,
)


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


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Results file: .parquet (needs pyarrow) or .jsonl. Rerunning resumes it.")
@MODEL
@BACKEND
@DEVICE
@PRECISION
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decoding processes [default: every core; with a GPU, every core but one]. "
                   "With --ray: decoding tasks at once [default: as many as the cluster's CPUs allow]. With a "
                   "triton:// model that has a video model: files sent at once [default: 4].")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Clips per inference call.")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="Labels per row.")
@SAMPLING
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
@READING
@TORCH_SOURCE
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the job summary as JSON to this file ('-' for stdout instead of the text).")
@friendly_errors
def classify(inputs, output, source, backend, device, precision, workers, batch_size, top_k, num_clips, sampling,
             frame_sample_rate, ray_address, actors, resume, retry_failed, strict, window, hop, segments, autorotate,
             max_pixels, attn_implementation, revision, offline, merge_tokens, json_path):
    """Classify every video of INPUTS into one results file, resumably, at full throughput.

    INPUTS are video files, directories (searched recursively) and manifests (.txt: a path per line;
    .csv / .parquet: a 'path' column). One row per video: path, label, probability, top_k, error and
    the settings that made it. A video that cannot be read is a row with its error; the job goes on.
    Rows are saved as they finish: a job that is stopped or killed loses at most the batch in flight,
    and the same command continues it.
    """
    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.pipeline import ClassifyJob, classify_corpus

    writable(json_path, "--json")
    source = source or str(demo_model_dir())
    job = ClassifyJob(
        model=source, backend=backend, device=device, precision=precision, batch_size=batch_size, top_k=top_k,
        num_clips=num_clips, sampling=sampling, frame_sample_rate=frame_sample_rate, workers=workers,
        ray=_ray_address(ray_address), actors=actors, resume=resume, retry_failed=retry_failed,
        runtime_options=runtime_options(source, backend, attn_implementation, revision, offline, merge_tokens),
        window=window, hop=hop, segments=segments, read_options=read_options(autorotate, max_pixels),
    )
    try:
        summary = classify_corpus(inputs, output, job, log=Stopwatch(), bar=_classify_bar)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: finished batches are kept in {output}.parts; run the same command to "
                   "continue", err=True)
        sys.exit(130)
    print_report(summary.format() + "\n", summary.to_dict(), json_path)
    if strict and summary.errors_in_output:
        raise click.ClickException(f"{summary.errors_in_output} of {summary.total} videos have an error row (--strict)")
