"""numba kernels behind ``vivit_deploy.video.resample``; imported on first use, since importing numba takes a while.

Module-level functions, so numba can cache the compiled code on disk (``cache=True``) and later
processes skip the compile. The arithmetic is Pillow's (see resample.py): int32 fixed point with
PRECISION_BITS fractional bits, rounding constant 1 << (PRECISION_BITS - 1), clip to 0..255.
"""

import numba
import numpy as np

from vivit_deploy.video.fixed_point import PRECISION_BITS

jit = numba.njit(parallel=True, cache=True, nogil=True)  # the two kernels: parallel over frames
helper = numba.njit(cache=True, nogil=True)  # what they call per row


@helper
def horizontal_pair(sa, sb, da, db, h_start, h_count, h_weight):
    # Horizontal pass over two source rows at once (they share every weight and index: twice the
    # independent work per loaded weight), rounded to uint8 as Pillow does. RGB interleaved.
    half = np.int32(1 << (PRECISION_BITS - 1))
    for x in range(h_start.shape[0]):
        s = h_start[x] * 3
        weights = h_weight[x]
        a0 = half
        a1 = half
        a2 = half
        b0 = half
        b1 = half
        b2 = half
        for k in range(h_count[x]):
            wk = weights[k]
            a0 += np.int32(sa[s]) * wk
            a1 += np.int32(sa[s + 1]) * wk
            a2 += np.int32(sa[s + 2]) * wk
            b0 += np.int32(sb[s]) * wk
            b1 += np.int32(sb[s + 1]) * wk
            b2 += np.int32(sb[s + 2]) * wk
            s += 3
        da[3 * x] = min(max(a0 >> PRECISION_BITS, 0), 255)
        da[3 * x + 1] = min(max(a1 >> PRECISION_BITS, 0), 255)
        da[3 * x + 2] = min(max(a2 >> PRECISION_BITS, 0), 255)
        db[3 * x] = min(max(b0 >> PRECISION_BITS, 0), 255)
        db[3 * x + 1] = min(max(b1 >> PRECISION_BITS, 0), 255)
        db[3 * x + 2] = min(max(b2 >> PRECISION_BITS, 0), 255)


@helper
def vertical_row(rows, y, v_start, v_count, v_weight, col0, acc):
    # acc[j] = rounding constant + sum_k rows[v_start[y] + k, col0 + j] * weight: one weight per tap
    # over a whole contiguous row, which vectorises.
    acc[:] = np.int32(1 << (PRECISION_BITS - 1))
    for k in range(v_count[y]):
        wk = v_weight[y, k]
        row = rows[v_start[y] + k]
        for j in range(acc.shape[0]):
            acc[j] += np.int32(row[col0 + j]) * wk


@jit
def horizontal_first(frames, h_start, h_count, h_weight, v_start, v_count, v_weight, row0, n_rows, lut, out):
    # frames (N, H, W*3) uint8 -> out (N, 3, h_out, w_out) float32 through lut (3, 256).
    w_out = h_start.shape[0]
    for f in numba.prange(frames.shape[0]):
        frame = frames[f]
        # Only the source rows the vertical pass reads, only the columns the crop keeps.
        tmp = np.empty((n_rows, w_out * 3), np.int32)
        for r in range(0, n_rows, 2):
            r2 = min(r + 1, n_rows - 1)  # an odd last row is paired with itself
            horizontal_pair(frame[row0 + r], frame[row0 + r2], tmp[r], tmp[r2], h_start, h_count, h_weight)
        acc = np.empty(w_out * 3, np.int32)
        for y in range(v_start.shape[0]):
            vertical_row(tmp, y, v_start, v_count, v_weight, 0, acc)
            for c in range(3):
                plane_row = out[f, c, y]
                table = lut[c]
                for x in range(w_out):
                    plane_row[x] = table[min(max(acc[3 * x + c] >> PRECISION_BITS, 0), 255)]
    return out


@jit
def vertical_first(frames, h_start, h_count, h_weight, v_start, v_count, v_weight, col0, n_cols, lut, out):
    # Pillow 13 runs the vertical pass first when the height shrinks most; same fused output.
    w_out = h_start.shape[0]
    h_out = v_start.shape[0]
    for f in numba.prange(frames.shape[0]):
        frame = frames[f]
        tmp = np.empty((h_out, n_cols * 3), np.int32)
        acc = np.empty(n_cols * 3, np.int32)
        for y in range(h_out):
            vertical_row(frame, y, v_start, v_count, v_weight, col0 * 3, acc)
            for j in range(n_cols * 3):
                tmp[y, j] = min(max(acc[j] >> PRECISION_BITS, 0), 255)
        rows = np.empty((2, w_out * 3), np.int32)
        for y in range(0, h_out, 2):
            y2 = min(y + 1, h_out - 1)  # an odd last row is paired with itself
            horizontal_pair(tmp[y], tmp[y2], rows[0], rows[1], h_start, h_count, h_weight)
            for i, yy in enumerate((y, y2)):
                for c in range(3):
                    plane_row = out[f, c, yy]
                    table = lut[c]
                    for x in range(w_out):
                        plane_row[x] = table[rows[i, 3 * x + c]]
    return out
