"""What the corpus job needs to know of a model before (or without) loading it on a device.

The driver of a Ray job must build the clip loader and label the rows on a machine that may have no
GPU, while the model runs in actors elsewhere; the local job uses the same description so both
executors fingerprint a model the same way. Reading it loads no weights into a framework.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from vivit_deploy.model.config import VivitConfig
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
    files: bool = False  # the runtime reads video files itself (a Triton model with its video model)

    @property
    def frame_shape(self) -> tuple[int, int, int, int]:
        return tuple(self.config.input_shape)


def describe_model(source: str | os.PathLike, backend: str | None = None, **hub_options: Any) -> ModelInfo:
    """Config, preprocessing and fingerprint of ``source`` for ``backend`` (default: from the source), as that
    backend reads them (``Runtime.describe_source``)."""
    from vivit_deploy.runtimes import BACKENDS, backend_for

    backend = backend or backend_for(source)
    info = BACKENDS[backend].describe_source(source, **hub_options)
    return ModelInfo(str(source), backend, info.config, info.preprocessor, info.sha256, info.precision, info.frames,
                     info.files)
