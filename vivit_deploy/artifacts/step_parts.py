"""What Model 2's part files are called and what they record: shared by the exporter that writes them
(``export/step_parts.py``) and the runtimes that run them (``Runtime.step_parts``).

Beside ``model.onnx``: ``model.steps.onnx`` (the frames of S time steps (S, t, C, H, W) -> their tokens (S, D)) and
``model.windows.onnx`` (the tokens of B windows (B, F, D) -> logits (B, L)). Each records the SHA-256 of the file it
belongs to, so a part is never run beside another model's file.
"""

from __future__ import annotations

from pathlib import Path

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


def check_owner(part: Path, recorded: str | None, owner: Path, owner_sha256: str) -> None:
    """Refuse a part file whose recorded owner (its ``OWNER_KEY`` metadata) is not ``owner``'s SHA-256."""
    from vivit_deploy.errors import ModelFileError

    if recorded != owner_sha256:
        raise ModelFileError(f"{part} belongs to another export than {owner}: export the model again "
                             "(vivit-export writes both), or remove the part files")


def part_paths(path: str | Path) -> tuple[Path, Path]:
    """The steps and windows files that belong beside ``path`` (``model.onnx``)."""
    path = Path(path)
    stem = path.with_suffix("")
    return stem.with_name(stem.name + STEPS_SUFFIX), stem.with_name(stem.name + WINDOWS_SUFFIX)


__all__ = ["OWNER_KEY", "check_owner", "PART_KEY", "STEPS_INPUT", "STEPS_OUTPUT", "STEPS_SUFFIX", "WINDOWS_INPUT", "WINDOWS_OUTPUT",
           "WINDOWS_SUFFIX", "part_paths", "reuses_steps"]
