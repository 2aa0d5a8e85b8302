"""A corpus the pipeline tests generate: a dozen labelled tiny videos and three files that are not videos."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

GOOD = 12
BAD = {"empty.mp4": "empty file", "notes.mp4": "not a video FFmpeg can read", "cut.mp4": "not a video FFmpeg can read"}


def classify_killed_midway(arguments: list[str], parts: Path, what: str) -> int:
    """Run ``vivit-deploy classify ARGUMENTS`` in a process, SIGKILL it once it has written 3 parts to ``parts``
    (or after 120 s), and return how many rows its parts hold. ``what`` names the units for the error when the
    job ended before it could be killed."""
    command = [sys.executable, "-m", "vivit_deploy.cli", "classify", *arguments, "--workers", "1", "--batch-size", "1"]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.jsonl"))) < 3 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    job.send_signal(signal.SIGKILL)
    assert job.wait() == -signal.SIGKILL, f"the job ended before it could be killed: give it more {what}"
    return sum(1 for p in parts.glob("part-*.jsonl") for _ in p.open())


def make_corpus(directory: Path) -> dict[str, str | None]:
    """Write the corpus into ``directory``; returns file name -> true label (None for the bad files)."""
    from vivit_deploy.demo.motion import LABELS, render_clip
    from vivit_deploy.video.reading import write_video

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    labels: dict[str, str | None] = {}
    for i in range(GOOD):
        label = i % len(LABELS)
        name = f"clip{i:02d}.mp4"
        write_video(directory / name, render_clip(label, rng), fps=8)
        labels[name] = LABELS[label]
    (directory / "empty.mp4").write_bytes(b"")
    (directory / "notes.mp4").write_text("a text file renamed .mp4\n")
    whole = (directory / "clip00.mp4").read_bytes()
    (directory / "cut.mp4").write_bytes(whole[: len(whole) // 2])  # the index (moov) is at the end: gone
    for name in BAD:
        labels[name] = None
    return labels


@pytest.fixture(scope="session")
def corpus_master(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    directory = tmp_path_factory.mktemp("corpus-master")
    return directory, make_corpus(directory)


@pytest.fixture
def corpus(tmp_path, corpus_master) -> tuple[Path, dict[str, str | None]]:
    """A private copy per test (tests change files in it)."""
    master, labels = corpus_master
    directory = tmp_path / "videos"
    shutil.copytree(master, directory)
    return directory, labels
