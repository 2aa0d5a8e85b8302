"""A synthetic video task in which the label is the direction of motion, so time cannot be ignored.

A textured square moves in a straight line across a static textured background. Every start
position is drawn uniformly, so any single frame, or the unordered set of frames, says nothing about
where the square is going (at most whether it travels along the horizontal or the vertical axis):
a model has to compare frames in order. The embedded demo model is trained on this task by
``scripts/train_demo_model.py``; its sample videos come from here too.
"""

from __future__ import annotations

import numpy as np

LABELS = ("moving left", "moving right", "moving up", "moving down")
_DIRECTIONS = {0: (0, -1), 1: (0, 1), 2: (-1, 0), 3: (1, 0)}  # (dy, dx) per label

FRAME_HW = (48, 64)  # video frame size (height, width): even, as H.264 needs
VIDEO_FRAMES = 16  # frames per generated video
OBJECT_SIZE = 16  # side of the moving square
SPEED = 1.5  # pixels per video frame


def _texture(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Blocky random colours: visible after H.264 compression and after a 2x downscale."""
    coarse = rng.integers(0, 256, (-(-h // cell), -(-w // cell), 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:h, :w]


def render_clip(label: int, rng: np.random.Generator, *, noise: float = 0.0) -> np.ndarray:
    """One video (VIDEO_FRAMES, H, W, 3) uint8 of a square moving in the direction of ``label``."""
    if label not in _DIRECTIONS:
        raise ValueError(f"label must be one of {sorted(_DIRECTIONS)}, got {label}")
    h, w = FRAME_HW
    s = OBJECT_SIZE
    travel = SPEED * (VIDEO_FRAMES - 1)
    background = (_texture(rng, h, w, 4).astype(np.float32) * 0.6).astype(np.uint8)  # darker than the square
    square = _texture(rng, s, s, 4)
    square[[0, -1], :] = 255  # a bright border makes the square stand out from any background
    square[:, [0, -1]] = 255
    dy, dx = _DIRECTIONS[label]
    # Start anywhere the whole path stays inside the frame; along the motion axis the start depends
    # on the direction so that the set of positions visited is the same for both directions.
    y0 = rng.uniform(0, h - s - abs(dy) * travel)
    x0 = rng.uniform(0, w - s - abs(dx) * travel)
    if dy < 0:
        y0 += travel
    if dx < 0:
        x0 += travel
    frames = np.empty((VIDEO_FRAMES, h, w, 3), np.uint8)
    for t in range(VIDEO_FRAMES):
        frame = background.copy()
        y, x = int(round(y0 + dy * SPEED * t)), int(round(x0 + dx * SPEED * t))
        frame[y : y + s, x : x + s] = square
        if noise:
            frame = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255).astype(np.uint8)
        frames[t] = frame
    return frames


def make_dataset(n: int, seed: int, *, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` videos with balanced labels: (videos (n, T, H, W, 3) uint8, labels (n,) int64)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(LABELS)
    rng.shuffle(labels)
    videos = np.stack([render_clip(int(label), rng, noise=noise) for label in labels])
    return videos, labels.astype(np.int64)
