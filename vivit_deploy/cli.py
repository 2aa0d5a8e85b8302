"""The ``vivit-deploy`` command line.

Every expected failure (bad file, bad checkpoint, bad option) ends with one readable line on stderr
and a non-zero exit code; a traceback means a bug in vivit_deploy.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import click

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


def _progress(message: str) -> float:
    click.echo(message, err=True)
    return time.perf_counter()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vivit-deploy")
def main() -> None:
    """ViViT from a PyTorch checkpoint to production: predict, and (next) export, compare, bench."""


@main.command()
@click.argument("videos", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", "source", default=None, help="Checkpoint directory or Hub id. Default: the embedded demo model.")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="How many labels to print.")
@click.option("--clips", "num_clips", default=1, show_default=True, type=click.IntRange(min=1),
              help="Temporal clips per video; their logits are averaged (the paper uses 4).")
@click.option("--sampling", type=click.Choice(["uniform", "stride"]), default="uniform", show_default=True,
              help="uniform: frames spread over the video (or each clip's segment); stride: every Nth frame.")
@click.option("--frame-sample-rate", default=4, show_default=True, type=click.IntRange(min=1),
              help="N for --sampling stride.")
@click.option("--attn", "attn_implementation", type=click.Choice(["sdpa", "eager"]), default="sdpa", show_default=True)
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of --model.")
@click.option("--offline", is_flag=True, help="Use only the local Hugging Face cache (like HF_HUB_OFFLINE=1).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_friendly_errors
def predict(videos, source, top_k, num_clips, sampling, frame_sample_rate, attn_implementation, revision, offline, as_json):
    """Classify VIDEOS (default: the bundled sample video) and print the top-k labels."""
    from vivit_deploy.demo import default_sample, demo_model_dir, sample_videos
    from vivit_deploy.predict import VideoClassifier

    truth: dict[Path, str] = {}
    if source is None:
        source = str(demo_model_dir())
        truth = {path.resolve(): label for path, label in sample_videos()}
        if not videos:
            videos = (default_sample(),)
    elif not videos:
        raise click.UsageError("give at least one video to classify with --model (the bundled samples suit only the demo model)")

    started = _progress(f"loading {source} ...")
    classifier = VideoClassifier.from_pretrained(
        source, attn_implementation=attn_implementation, revision=revision, local_files_only=offline or None
    )
    _progress(f"loaded in {time.perf_counter() - started:.1f} s; classifying {len(videos)} video(s)")
    results = []
    for video in videos:
        predictions = classifier.classify(
            video, top_k=top_k, num_clips=num_clips, sampling=sampling, frame_sample_rate=frame_sample_rate
        )
        entry = {"video": str(video), "predictions": [p.to_dict() for p in predictions]}
        if Path(video).resolve() in truth:
            entry["true_label"] = truth[Path(video).resolve()]
        results.append(entry)
        if not as_json:
            known = f"  (true label: {entry['true_label']})" if "true_label" in entry else ""
            click.echo(f"{video}{known}")
            for rank, p in enumerate(predictions, 1):
                click.echo(f"  {rank}. {p.label:<24} {p.probability:7.2%}")
    if as_json:
        json.dump(results, sys.stdout, indent=2)
        click.echo()


if __name__ == "__main__":
    main()
