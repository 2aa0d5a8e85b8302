"""What the corpus job needs to know of a model before (or without) loading it on a device.

The driver of a Ray job must build the clip loader and label the rows on a machine that may have no
GPU, while the model runs in actors elsewhere; the local job uses the same description so both
executors fingerprint a model the same way. Reading it loads no weights into a framework.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vivit_deploy.model.config import VivitConfig
from vivit_deploy.files import sha256_of
from vivit_deploy.video.preprocessing import PreprocessorConfig


@dataclass(frozen=True)
class ModelInfo:
    source: str  # as the user gave it
    backend: str  # the runtime backend that will run it
    config: VivitConfig
    preprocessor: PreprocessorConfig
    sha256: str  # of the model file, or of a checkpoint's config and weight files together
    precision: str | None  # fixed by an exported file or engine; None where the runtime chooses (PyTorch)
    frames: bool = False  # the runtime preprocesses uint8 frames itself (a Triton model with its frames ensemble)

    @property
    def frame_shape(self) -> tuple[int, int, int, int]:
        return tuple(self.config.input_shape)


def describe_model(source: str | os.PathLike, backend: str | None = None, **hub_options: Any) -> ModelInfo:
    """Config, preprocessing and fingerprint of ``source`` for ``backend`` (default: from the source)."""
    from vivit_deploy.runtimes import backend_for

    backend = backend or backend_for(source)
    if backend == "triton":
        from vivit_deploy.runtimes.triton_runtime import TritonRuntime

        with TritonRuntime(str(source)) as served:  # a few HTTP calls: configuration and readiness
            sha = served.parameters.get("vivit_deploy.model_sha256") or hashlib.sha256(
                json.dumps(served.parameters, sort_keys=True).encode()).hexdigest()
            return ModelInfo(str(source), backend, served.config, served.preprocessor, sha, served.precision,
                             frames=served.frames_model is not None)
    path = Path(source)
    if path.suffix.lower() in (".engine", ".plan"):
        from vivit_deploy.artifacts.engines import engine_metadata

        sidecar, metadata = engine_metadata(path)
        return ModelInfo(str(source), backend, metadata.config, metadata.preprocessor, sha256_of(path),
                         sidecar["precision"])
    if path.suffix.lower() == ".onnx":
        from vivit_deploy.artifacts.metadata import read_onnx_metadata

        metadata = read_onnx_metadata(path)
        return ModelInfo(str(source), backend, metadata.config, metadata.preprocessor, sha256_of(path),
                         metadata.precision)
    from vivit_deploy.model.checkpoint import load_config
    from vivit_deploy.model.hf_layout import resolve_source
    from vivit_deploy.video.preprocessing import preprocessor_config_in

    options = {k: v for k, v in hub_options.items() if v is not None}
    directory = resolve_source(source, **options)
    config = load_config(directory)
    preprocessor = preprocessor_config_in(directory) or PreprocessorConfig.for_input_size(
        config.image_height, config.image_width)
    weights = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    return ModelInfo(str(source), backend, config, preprocessor, sha256_of(*weights), None)
