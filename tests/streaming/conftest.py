"""A real RTSP server (GStreamer's, from Debian, driven by the system Python) on 127.0.0.1 with a free port, and
videos of the demo task whose direction of motion changes mid-way.

Without GStreamer's RTSP server (`apt-get install gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-good
gstreamer1.0-plugins-base`, as .ci/run does) the tests that need one skip and say so. Every server is stopped by
its fixture; every client connects to 127.0.0.1.
"""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = Path(__file__).resolve().parents[2] / "scripts" / "serve_rtsp.py"
START_TIMEOUT = 30  # seconds the server may take to listen
RIGHT, LEFT = 1, 0  # the demo task's labels "moving right", "moving left"


def rtsp_missing() -> str | None:
    if not Path(SYSTEM_PYTHON).exists():
        return f"no {SYSTEM_PYTHON}: GStreamer's RTSP server runs with the system Python"
    check = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                            "from gi.repository import GstRtspServer"], capture_output=True)
    if check.returncode:
        return ("GStreamer's RTSP server is not installed: apt-get install gir1.2-gst-rtsp-server-1.0 python3-gi "
                "gstreamer1.0-plugins-good gstreamer1.0-plugins-base")
    return None


RTSP_MISSING = rtsp_missing()
requires_rtsp = pytest.mark.skipif(RTSP_MISSING is not None, reason=str(RTSP_MISSING))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspServer:
    """scripts/serve_rtsp.py serving ``video`` at rtsp://127.0.0.1:PORT/cam; ``start`` / ``kill`` / ``restart``."""

    def __init__(self, video: Path, port: int | None = None):
        self.video, self.port = video, port or free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.process: subprocess.Popen | None = None

    def start(self) -> "RtspServer":
        self.process = subprocess.Popen([SYSTEM_PYTHON, str(SERVER), str(self.video), "--port", str(self.port)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT)
        line = self.process.stdout.readline() if ready else f"nothing in {START_TIMEOUT} s"  # "ready" once it listens
        if line.strip() != "ready":
            self.kill()
            raise RuntimeError(f"the RTSP server did not start: {line!r} {self.process.stderr.read()[-500:]}")
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> "RtspServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.kill()


@pytest.fixture(scope="session")
def phases_video(tmp_path_factory) -> Path:
    """12 s at 8 fps: 6 s of a square moving right, then 6 s moving left (each 2 s one demo clip)."""
    from vivit_deploy.demo.motion import write_phases

    return write_phases(tmp_path_factory.mktemp("streams") / "right-then-left.mp4", [(RIGHT, 3), (LEFT, 3)])


@pytest.fixture(scope="session")
def demo_runtime():
    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.runtimes import load_runtime

    with load_runtime(demo_model_dir(), "torch", device="cpu") as runtime:
        yield runtime


def collect(classifier, until=None, timeout: float = 60.0) -> list[dict]:
    """Every record of ``classifier`` until it ends, ``until(records)`` holds, or ``timeout`` seconds pass."""
    records = []
    timer = threading.Timer(timeout, classifier.stop)  # also when no record comes at all (a stalled stream)
    timer.daemon = True
    timer.start()
    try:
        for record in classifier:
            records.append(record)
            if until is not None and until(records):
                classifier.stop()
    finally:
        timer.cancel()
    return records


def windows_of(records: list[dict], stream: str | None = None) -> list[dict]:
    return [r for r in records if "event" not in r and (stream is None or r["stream"] == stream)]


def events_of(records: list[dict], name: str) -> list[dict]:
    return [r for r in records if r.get("event") == name]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vivit_deploy.cli", *args], capture_output=True, text=True,
                          timeout=timeout)
