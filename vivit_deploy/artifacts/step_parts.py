"""What Model 2's part files are called and what they record: shared by the exporter that writes them
(``export/step_parts.py``) and the runtimes that run them (``Runtime.step_parts``).

Beside ``model.onnx``: ``model.steps.onnx`` (the frames of S time steps (S, t, C, H, W) -> their tokens (S, D)) and
``model.windows.onnx`` (the tokens of B windows (B, F, D) -> logits (B, L)). Each records the SHA-256 of the file it
belongs to, so a part is never run beside another model's file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

STEPS_SUFFIX = ".steps.onnx"
WINDOWS_SUFFIX = ".windows.onnx"
PART_KEY = "vivit_deploy.step_part"  # "steps" or "windows"
OWNER_KEY = "vivit_deploy.step_part_of"  # the SHA-256 of the whole model's file
STEPS_INPUT, STEPS_OUTPUT = "step_frames", "step_tokens"
WINDOWS_INPUT, WINDOWS_OUTPUT = "window_tokens", "logits"


def reuses_steps(config) -> bool:
    """Whether a model's time steps can be encoded once for every window that holds them: Model 2 with the paper's
    separate positions (with vit-pytorch's per-step positions a step's encoding depends on its index in the clip)."""
    return config.variant == "factorised_encoder" and config.positions == "separate"


def load_parts(source: str | Path, open_part: Callable[[Path], tuple[Any, str | None]]) -> list | None:
    """The steps and windows files beside ``source``, each opened by ``open_part`` (a backend's loader: the loaded
    part and the owner its ``OWNER_KEY`` metadata records) and refused unless it belongs to ``source`` (its SHA-256);
    None where either file is missing (the stream then encodes windows whole)."""
    from vivit_deploy.errors import ModelFileError
    from vivit_deploy.files import sha256_of

    source = Path(source)
    paths = part_paths(source)
    if not all(p.is_file() for p in paths):
        return None
    owner = sha256_of(source)
    loaded = []
    for path in paths:
        part, recorded = open_part(path)
        if recorded != owner:
            raise ModelFileError(f"{path} belongs to another export than {source}: export the model again "
                                 "(vivit-export writes both), or remove the part files")
        loaded.append(part)
    return loaded


def part_paths(path: str | Path) -> tuple[Path, Path]:
    """The steps and windows files that belong beside ``path`` (``model.onnx``)."""
    path = Path(path)
    stem = path.with_suffix("")
    return stem.with_name(stem.name + STEPS_SUFFIX), stem.with_name(stem.name + WINDOWS_SUFFIX)


__all__ = ["OWNER_KEY", "PART_KEY", "STEPS_INPUT", "STEPS_OUTPUT", "STEPS_SUFFIX", "WINDOWS_INPUT", "WINDOWS_OUTPUT",
           "WINDOWS_SUFFIX", "load_parts", "part_paths", "reuses_steps"]
