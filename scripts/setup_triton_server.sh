#!/usr/bin/env bash
# Set up a real Triton Inference Server (2.51, CPU, python backend) from the package registries, for the
# tests marked `triton` and for trying a repository from `vivit-deploy triton-repo` without Docker:
#
#     bash scripts/setup_triton_server.sh DIR        # then: export VIVIT_TRITON_HOME=DIR
#
# The server binary comes from NVIDIA's nvidia-pytriton wheel on PyPI (it bundles tritonserver and the
# python backend, no ONNX Runtime or TensorRT backend). Its python backend stub links the system's
# libpython3.X and runs Python isolated, so the packages our python models need (numpy < 2, which the
# 2.51 stub requires; numba; Pillow, the same version as here, so that preprocessing is bit-identical;
# ONNX Runtime, and PyAV for the video model) go into DIR/python, which the model.py files put on sys.path from PYTHONPATH.
#
# Layout: DIR/bin/tritonserver, DIR/lib (its bundled libraries), DIR/backends/python, DIR/python.
set -euo pipefail

dir=${1:?usage: setup_triton_server.sh DIR}
python=${PYTHON:-python}
version=0.7.0
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

minor=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if ! ldconfig -p 2>/dev/null | grep -q "libpython$minor.so.1.0"; then
    echo "setup_triton_server: no shared libpython$minor on this system (ldconfig); the python backend stub needs one" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download -q --no-deps --only-binary=:all: "nvidia-pytriton==$version" -d "$work"
"$python" -m zipfile -e "$work"/nvidia_pytriton-*.whl "$work/wheel"
server="$work/wheel/pytriton/tritonserver"

rm -rf "$dir/bin" "$dir/lib" "$dir/backends"
mkdir -p "$dir/bin" "$dir/backends/python"
cp "$server/bin/tritonserver" "$dir/bin/"
cp -r "$work/wheel/nvidia_pytriton.libs" "$dir/lib"
cp "$server/backends/python/"* "$dir/backends/python/"
cp "$server/python_backend_stubs/$minor/triton_python_backend_stub" "$dir/backends/python/"
chmod +x "$dir/bin/tritonserver" "$dir/backends/python/triton_python_backend_stub"

pillow=$("$python" -c 'import PIL; print(PIL.__version__)')
# PyAV for the video model (triton-repo --video), the version the project reads with, so the server decodes alike
av=$("$python" -c 'import av; print(av.__version__)')
rm -rf "$dir/python"
"$python" -m pip install -q --no-warn-conflicts --target "$dir/python" --only-binary=:all: "numpy<2" numba "pillow==$pillow" \
    "av==$av" onnxruntime
echo "tritonserver 2.51 (from nvidia-pytriton $version) in $dir (python backend for Python $minor, Pillow $pillow): export VIVIT_TRITON_HOME=$dir"
