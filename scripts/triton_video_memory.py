"""Peak resident memory (Linux VmHWM) of the video model's python-backend process (one instance) as it reads a
10 s 1080p H.264 file, then a 10 s 4K one, with 1 and 4 clips each: what a request costs the server beside the file.

    VIVIT_TRITON_HOME=DIR python scripts/triton_video_memory.py        # the demo model; needs ffmpeg

Each frame is preprocessed as it is decoded, so 4 clips of a 4K file should cost about what 1 clip does (32 raw 4K
frames would be 796 MB). Prints MiB per process after each request.
"""
import os, shutil, subprocess, tempfile
from pathlib import Path
from vivit_deploy.demo import demo_model_dir
from vivit_deploy.export import export_onnx
from vivit_deploy.serving.repository import write_repository
from vivit_deploy.serving.local_server import LocalTritonServer
from vivit_deploy.runtimes import load_runtime

w = Path(tempfile.mkdtemp())
export_onnx(demo_model_dir(), w / "m.onnx")
write_repository(w / "m.onnx", w / "repo", platform="python", video=True, video_instances=1, max_video_bytes=1 << 30)
files = {}
for name, size, secs in (("1080p", "1920x1080", 10), ("4k", "3840x2160", 10)):
    files[name] = w / f"{name}.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30:duration={secs}",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(files[name])], check=True)

def stubs():
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            if "triton_python_backend_stub" in cmd and "vivit_video" in cmd:
                status = open(f"/proc/{pid}/status").read()
                out[pid] = {k: int(l.split()[1]) // 1024 for l in status.splitlines() for k in ("VmHWM", "VmRSS") if l.startswith(k + ":")}
        except OSError:
            pass
    return out

with LocalTritonServer(None, w / "repo") as server, load_runtime(f"triton://{server.http}/vivit") as remote:
    print("after loading:", stubs())
    for name in ("1080p", "4k"):
        for clips in (1, 4):
            remote.run_video(files[name], num_clips=clips)
            print(f"after {name} ({files[name].stat().st_size / 1e6:.1f} MB, {clips} clip(s)), MiB:", stubs())
shutil.rmtree(w)
