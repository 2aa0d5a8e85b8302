"""Serve an H.264 mp4 file as a live RTSP stream, at its own pace, with GStreamer's RTSP server.

    /usr/bin/python3 scripts/serve_rtsp.py VIDEO.mp4 [--port 8554] [--mount /cam] [--address 127.0.0.1]
    vivit-deploy stream rtsp://127.0.0.1:8554/cam

Runs with the system Python, whose ``gi`` (PyGObject) the project's virtual environment does not have:
``apt-get install gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-good gstreamer1.0-plugins-base``.
Clients share one playback of the file (a live source: whoever connects late joins mid-way); it plays
once and the stream ends with it. Prints "ready" on stdout when it accepts connections. The tests
(tests/streaming/) start it on 127.0.0.1 with a free port and kill it to make a stream drop.
"""

import argparse
import signal
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--address", default="127.0.0.1")
    args = parser.parse_args()

    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    location = args.video.replace('"', '\\"')
    factory.set_launch(f'( filesrc location="{location}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )')
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on {args.address}:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    print("ready", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
