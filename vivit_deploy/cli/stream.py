"""`vivit-deploy stream`: live streams classified window by window, as JSON Lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from vivit_deploy.cli.common import (
    BACKEND, DEVICE, MODEL, PRECISION, READING, TORCH_SOURCE, Stopwatch, friendly_errors, read_options, runtime_options,
    writable,
)


@click.command()
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@MODEL
@BACKEND
@DEVICE
@PRECISION
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
@click.option("--reuse/--no-reuse", default=True, show_default=True,
              help="Model 2 with separate positions: encode each time step once for every window that holds it "
                   "(the same logits; overlapping windows cost their new steps). --no-reuse encodes every window whole.")
@READING
@TORCH_SOURCE
@friendly_errors
def stream(sources, source, backend, device, precision, window, hop, smooth, min_probability, top_k, events_path,
           duration, reconnect, realtime, reuse, autorotate, max_pixels, attn_implementation, revision, offline, merge_tokens):
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
    writable(events_path, "--events")
    source = source or str(demo_model_dir())
    progress = Stopwatch()
    progress(f"loading {source} ...")
    runtime = load_runtime(source, backend, device=device, precision=precision,
                           **runtime_options(source, backend, attn_implementation, revision, offline, merge_tokens))
    classifier = StreamClassifier(runtime, parsed, window=window, hop=hop, smooth=smooth, min_probability=min_probability,
                                  top_k=top_k, realtime=realtime, reconnect=reconnect, duration=duration,
                                  read_options=read_options(autorotate, max_pixels), reuse=reuse)
    reusing = "; each time step encoded once (Model 2's parts)" if classifier.parts is not None else ""
    progress(f"{runtime.backend} on {runtime.device} ({runtime.precision}); following {len(parsed)} stream(s), "
             f"{window:g} s windows every {hop:g} s{reusing}")
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
