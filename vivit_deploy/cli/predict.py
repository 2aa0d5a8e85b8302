"""`vivit-deploy predict`: the top-k labels of videos, with any runtime."""

from __future__ import annotations

from pathlib import Path

import click

from vivit_deploy.cli.common import (
    BACKEND, DEVICE, GEOMETRY, MODEL, PRECISION, READING, SAMPLING, TORCH_SOURCE, Stopwatch, emit_json,
    friendly_errors, geometry_options, json_only, read_options, runtime_options, writable,
)


@click.command()
@click.argument("videos", nargs=-1, type=click.Path(path_type=Path))
@MODEL
@BACKEND
@DEVICE
@PRECISION
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="How many labels to print.")
@SAMPLING
@READING
@GEOMETRY
@TORCH_SOURCE
@click.option("--json", "json_path", type=click.Path(path_type=Path, allow_dash=True), default=None,
              help="Also write the predictions as JSON to this file ('-' prints the JSON instead of the table).")
@friendly_errors
def predict(videos, source, backend, device, precision, top_k, num_clips, sampling, frame_sample_rate, autorotate,
            max_pixels, num_frames, image_size, attn_implementation, revision, offline, merge_tokens, json_path):
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

    writable(json_path, "--json")
    progress = Stopwatch()
    progress(f"loading {source} ...")
    options = {**runtime_options(source, backend, attn_implementation, revision, offline, merge_tokens),
               **geometry_options(source, backend, num_frames, image_size)}
    classifier = VideoClassifier.from_pretrained(source, backend, read_options(autorotate, max_pixels), device=device,
                                                 precision=precision, **options)
    runtime = classifier.runtime
    progress(f"{runtime.backend} on {runtime.device} ({runtime.precision}); classifying {len(videos)} video(s)")
    results = []
    with classifier:
        for video in videos:
            predictions, damaged = classifier.classify_file(video, top_k=top_k, num_clips=num_clips, sampling=sampling,
                                                            frame_sample_rate=frame_sample_rate)
            entry = {"video": str(video), "predictions": [p.to_dict() for p in predictions], "damaged_frames": damaged}
            label = truth.get(Path(video).resolve())
            if label is not None and label in classifier.id2label.values():
                entry["true_label"] = label
            results.append(entry)
            if not json_only(json_path):
                known = f"  (true label: {entry['true_label']})" if "true_label" in entry else ""
                click.echo(f"{video}{known}")
                for rank, p in enumerate(predictions, 1):
                    click.echo(f"  {rank}. {p.label:<24} {p.probability:7.2%}")
    emit_json(results, json_path)
