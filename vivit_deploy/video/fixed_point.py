"""Pillow's fixed-point resampling arithmetic, shared by the coefficients (``resample``) and the compiled kernels
that apply them (``_resample_kernels``): int32 with PRECISION_BITS fractional bits, rounded from 1 << (bits - 1)."""

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point: 8 bits of result, 2 of headroom for negative lobes
