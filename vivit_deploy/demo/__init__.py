"""The embedded demo model and its labelled sample videos, shipped inside the package.

A small ViViT trained by ``scripts/train_demo_model.py`` on the motion-direction task of
``vivit_deploy.demo.motion``; the files are in the Hugging Face layout, so every entry point that takes
a checkpoint takes ``demo_model_dir()``. The files themselves are package data in ``vivit_deploy/assets``.
"""

from __future__ import annotations

import json
from pathlib import Path

ASSETS = Path(__file__).parent.parent / "assets"  # package data: vivit_deploy/assets
DEMO_MODEL = ASSETS / "demo-model"
SAMPLES = ASSETS / "samples"
SAMPLE_LABELS = SAMPLES / "labels.json"


def demo_model_dir() -> Path:
    """Directory of the demo checkpoint: config.json, model.safetensors, preprocessor_config.json."""
    return DEMO_MODEL


def sample_videos() -> list[tuple[Path, str]]:
    """The shipped sample videos with their true labels, in a stable order."""
    labels = json.loads(SAMPLE_LABELS.read_text(encoding="utf-8"))
    return [(SAMPLES / name, label) for name, label in sorted(labels.items())]


def default_sample() -> Path:
    """The video ``vivit-deploy predict`` classifies when given none."""
    return sample_videos()[0][0]
