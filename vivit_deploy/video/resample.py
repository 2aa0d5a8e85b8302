"""Pillow's resize, reproduced bit for bit, fused with the center crop and the float conversion.

transformers' ViViT processor resizes every frame with ``PIL.Image.resize`` and then center-crops it.
Pillow's convolution resamplers (``src/libImaging/Resample.c``) are separable: for each output column a
few input columns are weighted by a filter (triangle for BILINEAR) whose support grows with the
downscale factor; the weights are normalised, rounded to fixed point with 22 fractional bits, the
horizontal pass is rounded to uint8, then the vertical pass runs on that. Every output pixel depends
only on its position in the full resized grid, so we compute the weights of the cropped window only and
never produce the pixels the crop throws away.

The per-pixel loops are compiled with numba (parallel over frames) and the last pass writes float32
through a per-channel lookup table, so rescale, normalisation and the (C, H, W) layout cost nothing extra.
The order of the two passes follows the installed Pillow (13 changed it, see
``horizontal_pass_first``). NEAREST is not a convolution in Pillow (it goes through its affine transform): for it we call Pillow itself.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from vivit_deploy.video.fixed_point import PRECISION_BITS


# PIL.Image.Resampling values, as they appear in preprocessor_config.json.
NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING = 0, 1, 2, 3, 4, 5
RESAMPLE_NAMES = {NEAREST: "nearest", LANCZOS: "lanczos", BILINEAR: "bilinear", BICUBIC: "bicubic", BOX: "box", HAMMING: "hamming"}

_F054 = float(np.float32(0.54))  # Pillow writes 0.54f and 0.46f: single-precision literals
_F046 = float(np.float32(0.46))


def _box(x: float) -> float:
    return 1.0 if -0.5 < x <= 0.5 else 0.0


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _hamming(x: float) -> float:
    x = abs(x)
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x = x * math.pi
    return math.sin(x) / x * (_F054 + _F046 * math.cos(x))


def _bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


_FILTERS = {BOX: (_box, 0.5), BILINEAR: (_bilinear, 1.0), HAMMING: (_hamming, 1.0), BICUBIC: (_bicubic, 2.0), LANCZOS: (_lanczos, 3.0)}


@lru_cache(maxsize=64)
def pillow_coefficients(in_size: int, out_size: int, resample: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's per-output-pixel (first input index, tap count, fixed-point weights) for one axis.

    Same double-precision arithmetic and the same rounding as ``precompute_coeffs`` and
    ``normalize_coeffs_8bpc`` in Pillow's Resample.c.
    """
    filt, filter_support = _FILTERS[resample]
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = filter_support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    starts = np.zeros(out_size, np.int32)
    counts = np.zeros(out_size, np.int32)
    weights = np.zeros((out_size, ksize), np.int32)
    ss = 1.0 / filterscale
    one = 1 << PRECISION_BITS
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [filt((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        total = 0.0
        for v in w:
            total += v
        for x, v in enumerate(w):
            if total != 0.0:
                v /= total
            weights[xx, x] = int(-0.5 + v * one) if v < 0 else int(0.5 + v * one)
        starts[xx], counts[xx] = xmin, xmax
    return starts, counts, weights


def crop_window(resized: int, crop: int) -> tuple[int, int]:
    """transformers' ``center_crop`` along one axis: (offset into the resized axis, zero padding before it).

    When the crop is larger than the image, transformers pads with zeros (ceil of half the difference
    before) and then crops; the returned offset is then negative.
    """
    top = (resized - crop) // 2
    if top >= 0:
        return top, 0
    pad = math.ceil((crop - resized) / 2)
    return top + pad, pad


def axis_plan(in_size: int, resized: int, crop: int | None, resample: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coefficients for the output positions that survive the crop; positions in the zero padding get no taps."""
    starts, counts, weights = pillow_coefficients(in_size, resized, resample)
    if crop is None:
        return starts, counts, weights
    offset, pad = crop_window(resized, crop)
    idx = np.arange(crop) - pad + offset
    idx_valid = (idx >= 0) & (idx < resized) & (np.arange(crop) >= pad)
    safe = np.clip(idx, 0, resized - 1)
    s, c, w = starts[safe].copy(), counts[safe].copy(), weights[safe].copy()
    c[~idx_valid] = 0  # no taps: the accumulator stays at the rounding constant and clips to 0, like the pad
    s[~idx_valid] = 0
    return s, c, w


def horizontal_pass_first(in_hw: tuple[int, int], out_hw: tuple[int, int], pillow_version: str | None = None) -> bool:
    """Which separable pass Pillow runs first; the uint8 rounding between the passes makes the order matter.

    Pillow up to 12 always resizes horizontally first. Pillow 13 runs the vertical pass first when the
    height shrinks by more than twice as many pixels as the width (``ImagingResampleInner``).
    """
    if pillow_version is None:
        pillow_version = _pillow_version()
    if int(pillow_version.split(".")[0]) < 13:
        return True
    (h, w), (oh, ow) = in_hw, out_hw
    return not (h - oh > 0 and h - oh > (w - ow) * 2)


@lru_cache(maxsize=1)
def _pillow_version() -> str:
    from importlib.metadata import version

    return version("pillow")


def _compiled_kernels():
    """The numba kernels, compiled on first use (or loaded from numba's on-disk cache)."""
    from vivit_deploy.video import _resample_kernels

    return _resample_kernels.horizontal_first, _resample_kernels.vertical_first


def _used_span(starts: np.ndarray, counts: np.ndarray) -> tuple[int, int]:
    """First source index and number of source indices that the taps with a non-zero count read."""
    used = counts > 0
    if not used.any():
        return 0, 1
    first = int(starts[used].min())
    return first, int((starts + counts)[used].max()) - first


def resize_crop_to_float(
    frames: np.ndarray,
    resized_hw: tuple[int, int] | None,
    crop_hw: tuple[int, int] | None,
    resample: int,
    lut: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Resize (as Pillow), center-crop (as transformers) and map through ``lut``: (N, H, W, C) uint8 -> (N, C, h, w) float32.

    ``resized_hw=None`` skips the resize; ``crop_hw=None`` skips the crop.
    """
    n, h, w, c = frames.shape
    if c != 3:
        raise ValueError(f"the fused kernels take RGB frames (3 channels), got {c}")
    rh, rw = resized_hw if resized_hw is not None else (h, w)
    oh, ow = crop_hw if crop_hw is not None else (rh, rw)
    if out is None:
        out = np.empty((n, c, oh, ow), np.float32)
    if resized_hw is not None and resample == NEAREST:
        return _nearest_with_pillow(frames, (rh, rw), crop_hw, lut, out)
    # Without a resize each pass is the identity: BOX at scale 1 has one tap of weight 1.0 per pixel.
    kind = resample if resized_hw is not None else BOX
    hs, hc, hw_ = axis_plan(w, rw, crop_hw[1] if crop_hw else None, kind)
    vs, vc, vw = axis_plan(h, rh, crop_hw[0] if crop_hw else None, kind)
    flat = np.ascontiguousarray(frames).reshape(n, h, w * c)
    lut = np.ascontiguousarray(lut, np.float32)
    horizontal_first, vertical_first = _compiled_kernels()
    if resized_hw is None or horizontal_pass_first((h, w), (rh, rw)):
        row0, n_rows = _used_span(vs, vc)
        vs = np.where(vc > 0, vs - row0, 0).astype(np.int32)
        horizontal_first(flat, hs, hc, hw_, vs, vc, vw, row0, n_rows, lut, out)
    else:
        col0, n_cols = _used_span(hs, hc)
        hs = np.where(hc > 0, hs - col0, 0).astype(np.int32)
        vertical_first(flat, hs, hc, hw_, vs, vc, vw, col0, n_cols, lut, out)
    return out


def _nearest_with_pillow(frames, resized_hw, crop_hw, lut, out):
    from PIL import Image

    rh, rw = resized_hw
    oh, ow = crop_hw if crop_hw is not None else (rh, rw)
    top, pad_top = crop_window(rh, oh)
    left, pad_left = crop_window(rw, ow)
    for i, frame in enumerate(frames):
        img = np.asarray(Image.fromarray(frame).resize((rw, rh), resample=NEAREST))
        canvas = np.zeros((oh, ow, frame.shape[2]), np.uint8)
        src = img[max(top, 0) : top + oh, max(left, 0) : left + ow]
        canvas[pad_top : pad_top + src.shape[0], pad_left : pad_left + src.shape[1]] = src
        for c in range(frame.shape[2]):
            out[i, c] = lut[c][canvas[..., c]]
    return out
