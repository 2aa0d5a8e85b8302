"""The embedded demo model, from the shipped files alone: layout, size, and accuracy on its held-out samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vivit_deploy.model.checkpoint import load_model
from vivit_deploy.demo import ASSETS, demo_model_dir, sample_videos
from vivit_deploy.predict import VideoClassifier
from vivit_deploy.demo.motion import LABELS

# The task is hard on purpose (slow squares, distractors: vivit_deploy/demo/motion.py), so that what merging or a
# lower precision costs shows: the model scores roughly 85-95% on held-out clips, far above the 25% of chance.
ACCURACY_RANGE = (0.85, 0.95)


def test_assets_are_small_and_in_the_hugging_face_layout():
    names = {p.name for p in demo_model_dir().iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= names
    total = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert total < 3 * 2**20, f"assets take {total / 2**20:.1f} MiB"
    config = json.loads((demo_model_dir() / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(LABELS))] == list(LABELS)


def test_samples_cover_every_label():
    samples = sample_videos()
    assert len(samples) >= 2 * len(LABELS)
    assert {label for _, label in samples} == set(LABELS)
    assert all(path.is_file() for path, _ in samples)


def test_accuracy_on_the_shipped_sample_videos():
    classifier = VideoClassifier.from_pretrained(demo_model_dir())
    results = [(classifier.classify(path, top_k=1)[0].label, label) for path, label in sample_videos()]
    accuracy = np.mean([predicted == label for predicted, label in results])
    record = json.loads((demo_model_dir() / "training.json").read_text())
    assert accuracy == record["sample_video_accuracy"] >= 0.75, results  # decoded as predict decodes, as training did
    assert results[0][0] == results[0][1]  # the video `vivit-deploy predict` shows when given none is one it gets right


def test_training_record_reports_held_out_accuracy_and_use_of_time():
    record = json.loads((demo_model_dir() / "training.json").read_text())
    assert ACCURACY_RANGE[0] <= record["heldout_accuracy"] <= ACCURACY_RANGE[1]
    # With frames shuffled only the axis of motion is left: a model that uses time drops towards 50% or below.
    assert record["heldout_accuracy_frames_shuffled"] <= 0.6


def test_transformers_loads_the_demo_model_and_agrees():
    transformers = pytest.importorskip("transformers", reason="transformers (the parity reference) is not installed")
    theirs = transformers.VivitForVideoClassification.from_pretrained(demo_model_dir()).eval()
    ours = load_model(demo_model_dir())
    x = torch.randn((3, *ours.config.input_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (theirs(x).logits - ours(x).logits).abs().max().item() <= 1e-5
