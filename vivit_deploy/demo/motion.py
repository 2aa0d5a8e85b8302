"""A synthetic video task in which the label is the direction of motion, so time cannot be ignored.

A textured square with a bright border moves in a straight line across a static textured background.
Every start position is drawn uniformly, so any single frame, or the unordered set of frames, says
nothing about where the square is going (at most whether it travels along the horizontal or the vertical
axis): a model has to compare frames in order. The task's clips (``make_dataset``) are hard on purpose,
so that a small model scores roughly 85-95% and a change that costs accuracy (token merging, a lower
precision) shows: each clip's speed is drawn from SPEED_RANGE (at the slow end the square moves about
one pixel of the model's 32 px input in a clip), and most clips carry a distractor, a square of the same
size without the border moving its own way. ``render_clip`` with its defaults draws the easy case (EASY_SPEED,
no distractor), which the streaming and pipeline tests follow. The embedded demo model is trained
on this task by ``scripts/train_demo_model.py``; its sample videos come from here too.
"""

from __future__ import annotations

import numpy as np

LABELS = ("moving left", "moving right", "moving up", "moving down")
_DIRECTIONS = {0: (0, -1), 1: (0, 1), 2: (-1, 0), 3: (1, 0)}  # (dy, dx) per label

FRAME_HW = (48, 64)  # video frame size (height, width): even, as H.264 needs
NOISE = 8.0  # pixel noise of the demo model's training and held-out clips
# Seeds of the demo model's data sets (scripts/train_demo_model.py with its default --seed 0): train 1,
# held-out 2 (its 90.5%), sample videos 3. Calibration takes a seed none of them uses (4), and
# scripts/write_demo_videos.py another (5).
HELDOUT_SEED = 2
CALIBRATION_SEED = 4
VIDEO_FRAMES = 16  # frames per generated video
OBJECT_SIZE = 16  # side of the moving square
SPEED = 1.5  # pixels per video frame: the task's fastest clips
EASY_SPEED = 1.0  # render_clip's default: mid-range, where the demo model gets clear clips right (100% of 200 checked)
SPEED_RANGE = (0.25, SPEED)  # the task's clips draw their speed uniformly from this range
DISTRACTOR_SHARE = 0.75  # share of the task's clips with a distractor square


def _texture(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Blocky random colours: visible after H.264 compression and after a 2x downscale."""
    coarse = rng.integers(0, 256, (-(-h // cell), -(-w // cell), 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:h, :w]


def _start(rng: np.random.Generator, dy: int, dx: int, travel: float) -> tuple[float, float]:
    """A start position from which the whole path stays inside the frame; along the motion axis it depends on
    the direction, so that the set of positions visited is the same for both directions."""
    h, w = FRAME_HW
    s = OBJECT_SIZE
    y0 = rng.uniform(0, h - s - abs(dy) * travel)
    x0 = rng.uniform(0, w - s - abs(dx) * travel)
    return y0 + (travel if dy < 0 else 0), x0 + (travel if dx < 0 else 0)


def render_clip(label: int, rng: np.random.Generator, *, noise: float = 0.0, speed: float = EASY_SPEED,
                distractor: bool = False) -> np.ndarray:
    """One video (VIDEO_FRAMES, H, W, 3) uint8 of a bordered square moving in the direction of ``label`` at
    ``speed`` pixels per frame; with ``distractor`` a square without the border moves in a direction and at a
    speed of its own, drawn under the labelled one."""
    if label not in _DIRECTIONS:
        raise ValueError(f"label must be one of {sorted(_DIRECTIONS)}, got {label}")
    if not 0 < speed <= SPEED:
        raise ValueError(f"speed must be above 0 and at most {SPEED} pixels per frame, got {speed}")
    h, w = FRAME_HW
    s = OBJECT_SIZE
    background = (_texture(rng, h, w, 4).astype(np.float32) * 0.6).astype(np.uint8)  # darker than the square
    square = _texture(rng, s, s, 4)
    square[[0, -1], :] = 255  # a bright border makes the square stand out from any background
    square[:, [0, -1]] = 255
    paths = []  # (square, y0, x0, dy, dx, speed), drawn in this order
    if distractor:
        other = _texture(rng, s, s, 4)
        other_dy, other_dx = _DIRECTIONS[int(rng.integers(len(_DIRECTIONS)))]
        other_speed = rng.uniform(*SPEED_RANGE)
        paths.append((other, *_start(rng, other_dy, other_dx, other_speed * (VIDEO_FRAMES - 1)), other_dy, other_dx,
                      other_speed))
    dy, dx = _DIRECTIONS[label]
    paths.append((square, *_start(rng, dy, dx, speed * (VIDEO_FRAMES - 1)), dy, dx, speed))
    frames = np.empty((VIDEO_FRAMES, h, w, 3), np.uint8)
    for t in range(VIDEO_FRAMES):
        frame = background.copy()
        for image, y0, x0, pdy, pdx, pspeed in paths:
            y, x = int(round(y0 + pdy * pspeed * t)), int(round(x0 + pdx * pspeed * t))
            frame[y : y + s, x : x + s] = image
        if noise:
            frame = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255).astype(np.uint8)
        frames[t] = frame
    return frames


def make_dataset(n: int, seed: int, *, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` videos of the task with balanced labels, each with its own speed and, most, a distractor:
    (videos (n, T, H, W, 3) uint8, labels (n,) int64)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(LABELS)
    rng.shuffle(labels)
    videos = np.stack([render_clip(int(label), rng, noise=noise, speed=float(rng.uniform(*SPEED_RANGE)),
                                   distractor=bool(rng.random() < DISTRACTOR_SHARE)) for label in labels])
    return videos, labels.astype(np.int64)


def write_corpus(directory, count: int, *, height: int = 48, width: int = 64, frames: int = VIDEO_FRAMES,
                 fps: int = 30, seed: int = 0, keyint: int | None = None) -> list[tuple[str, str]]:
    """Write ``count`` mp4 videos of the motion task at any size and length, for throughput measurements.

    Each clip is rendered at FRAME_HW, resampled in time to ``frames`` and scaled up by pixel repetition
    to (height, width) (multiples of 48 x 64 keep the motion intact), with mild noise so the encoder
    has real work. Returns (file name, label) pairs.
    """
    from pathlib import Path

    from vivit_deploy.video.reading import write_video

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        label = i % len(LABELS)
        clip = render_clip(label, rng)
        clip = clip[np.linspace(0, VIDEO_FRAMES - 1, frames).round().astype(int)]
        sy, sx = -(-height // FRAME_HW[0]), -(-width // FRAME_HW[1])
        clip = np.repeat(np.repeat(clip, sy, axis=1), sx, axis=2)[:, :height, :width]
        noisy = clip.astype(np.int16) + rng.integers(0, 16, clip.shape, dtype=np.int16)
        name = f"video{i:05d}.mp4"
        write_video(directory / name, np.clip(noisy, 0, 255).astype(np.uint8), fps=fps, crf=23, keyint=keyint)
        out.append((name, LABELS[label]))
    return out


def labelled_clips(count: int, seed: int, num_frames: int, preprocessor, views: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``count`` preprocessed clips of the task as the demo model was trained and evaluated (uniformly
    sampled frames, no codec), with their labels: (pixel_values (N * views, T, C, H, W), labels (N,)); with
    ``views`` each video gives that many clips, each sampled over its own equal part of the video, one after another."""
    from vivit_deploy.video.reading import sample_indices

    videos, labels = make_dataset(count, seed, noise=NOISE)
    frames = sample_indices(VIDEO_FRAMES, num_frames, sampling="uniform", num_clips=views)  # (views, T)
    clips = videos[:, frames]  # (N, views, T, H, W, 3)
    return preprocessor(clips.reshape(-1, *clips.shape[2:])), labels


def write_phases(path, phases, *, fps: int = 8, seed: int = 0, noise: float = NOISE):
    """An mp4 of the motion task that changes direction: ``phases`` is (label index, clips) pairs, each clip a
    fresh VIDEO_FRAMES-frame video of that direction (the length of one demo clip at ``fps`` 8: 2 s), played
    back to back. For following a stream whose content changes: a window that lines up with a clip sees
    what the demo model was trained on. Returns the path."""
    from vivit_deploy.video.reading import write_video

    rng = np.random.default_rng(seed)
    frames = [render_clip(int(label), rng, noise=noise) for label, clips in phases for _ in range(clips)]
    return write_video(path, np.concatenate(frames), fps=fps)
