"""vivit_deploy: ViViT from a PyTorch checkpoint to production.

    from vivit_deploy import load_model, VideoPreprocessor, read_video

Names are resolved on first use, so ``import vivit_deploy`` (and the preprocessor) never imports
torch: a process that only preprocesses or runs a non-torch backend does not pay for it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "VivitConfig": "vivit_deploy.model.config",
    "preset": "vivit_deploy.model.config",
    "VivitModel": "vivit_deploy.model.modeling",
    "VivitForVideoClassification": "vivit_deploy.model.modeling",
    "VideoMAEConfig": "vivit_deploy.model.config",
    "VideoMAEModel": "vivit_deploy.model.videomae",
    "VideoMAEForVideoClassification": "vivit_deploy.model.videomae",
    "TimesformerConfig": "vivit_deploy.model.config",
    "TimesformerModel": "vivit_deploy.model.timesformer",
    "TimesformerForVideoClassification": "vivit_deploy.model.timesformer",
    "VJEPA2Config": "vivit_deploy.model.config",
    "VJEPA2Model": "vivit_deploy.model.vjepa2",
    "VJEPA2ForVideoClassification": "vivit_deploy.model.vjepa2",
    "load_model": "vivit_deploy.model.checkpoint",
    "save_pretrained": "vivit_deploy.model.checkpoint",
    "VideoPreprocessor": "vivit_deploy.video.preprocessing",
    "VivitImageProcessor": "vivit_deploy.video.image_processor",
    "PreprocessorConfig": "vivit_deploy.video.preprocessing",
    "read_video": "vivit_deploy.video.reading",
    "read_clips": "vivit_deploy.video.reading",
    "sample_indices": "vivit_deploy.video.reading",
    "VideoClassifier": "vivit_deploy.predict",
    "StreamClassifier": "vivit_deploy.streaming",
    "load_runtime": "vivit_deploy.runtimes",
    "export_onnx": "vivit_deploy.export",
    "ExportOptions": "vivit_deploy.export",
    "demo_model_dir": "vivit_deploy.demo",
    "sample_videos": "vivit_deploy.demo",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vivit_deploy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
