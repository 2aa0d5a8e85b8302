"""A tritonserver process on this machine, on 127.0.0.1 with free ports: for the tests and for trying a
repository from `vivit-deploy triton-repo` without Docker.

    with LocalTritonServer("/path/to/home", "repo") as server:      # home: scripts/setup_triton_server.sh DIR
        runtime = load_runtime(f"triton://{server.http}/vivit")

It binds HTTP only (gRPC with ``grpc=True``, metrics off), all on 127.0.0.1, waits until the server says ready (or fails with the end of its
log), and stops it on exit (SIGTERM, then SIGKILL after a grace period): nothing outlives the block.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from vivit_deploy.errors import BackendUnavailableError, VivitDeployError

HOME_VARIABLE = "VIVIT_TRITON_HOME"


class ServerStartError(VivitDeployError, RuntimeError):
    """tritonserver exited or did not become ready."""


def triton_home_problem(home: str | os.PathLike | None = None) -> str | None:
    """Why no local tritonserver can start from ``home`` (default: $VIVIT_TRITON_HOME), or None."""
    home = home or os.environ.get(HOME_VARIABLE)
    if not home:
        return (f"no tritonserver: set {HOME_VARIABLE} to a directory made by `bash scripts/setup_triton_server.sh DIR` "
                "(it fetches nvidia-pytriton's tritonserver 2.51 from PyPI)")
    home = Path(home)
    for needed in ("bin/tritonserver", "backends/python/triton_python_backend_stub", "python"):
        if not (home / needed).exists():
            return f"{home} has no {needed}: run `bash scripts/setup_triton_server.sh {home}` again"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalTritonServer:
    """tritonserver over ``repository`` from a home made by scripts/setup_triton_server.sh."""

    def __init__(self, home: str | os.PathLike | None, repository: str | os.PathLike, *, timeout: float = 120.0,
                 extra_pythonpath: tuple[str, ...] = (), grpc: bool = False, options: tuple[str, ...] = ()):
        problem = triton_home_problem(home)
        if problem:
            raise BackendUnavailableError(problem)
        self.home = Path(home or os.environ[HOME_VARIABLE])
        self.repository = Path(repository)
        self.timeout = timeout
        self.extra_pythonpath = extra_pythonpath
        self.port = free_port()
        self.http = f"127.0.0.1:{self.port}"
        self.grpc = f"127.0.0.1:{free_port()}" if grpc else None  # host:port of gRPC, when asked for
        self.options = tuple(options)  # more tritonserver flags, e.g. ("--http-max-input-size=134217728",)
        self.process: subprocess.Popen | None = None
        self.log = Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])

    def start(self) -> "LocalTritonServer":
        import vivit_deploy

        package_root = str(Path(vivit_deploy.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.home / "lib"), env.get("LD_LIBRARY_PATH")]))
        # what the python models import: the stub's own packages, then vivit_deploy itself
        # (VIVIT_TRITON_EXTRA_PYTHONPATH: more, e.g. the site-packages of an environment that has torch)
        extra = [*self.extra_pythonpath, *filter(None, os.environ.get("VIVIT_TRITON_EXTRA_PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join([str(self.home / "python"), package_root, *extra])
        command = [
            str(self.home / "bin" / "tritonserver"), "--model-repository", str(self.repository),
            "--backend-directory", str(self.home / "backends"), "--http-address", "127.0.0.1",
            "--http-port", str(self.port), "--allow-metrics", "false", "--exit-timeout-secs", "5",
            *(["--allow-grpc", "true", "--grpc-address", "127.0.0.1", "--grpc-port", self.grpc.rsplit(":", 1)[1]]
              if self.grpc else ["--allow-grpc", "false"]),
            *self.options,
        ]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(f"tritonserver exited with code {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.http}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise ServerStartError(f"tritonserver was not ready after {self.timeout:.0f} s:\n{self.tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # the server and its python backend stubs
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> "LocalTritonServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
