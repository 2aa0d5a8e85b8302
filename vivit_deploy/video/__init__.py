"""Video in: reading and sampling frames, and the one preprocessor every backend is fed by.

- ``reading``: frame sampling, decoding with PyAV (seeking where it saves work), windows of a timeline;
- ``preprocessing``: ``VideoPreprocessor``, transformers' ``VivitImageProcessor`` reproduced exactly;
- ``resample``: Pillow's resize, fused with the crop and the float conversion; ``fixed_point`` its
  arithmetic; ``_resample_kernels`` the numba kernels (imported on first use).

Numpy and PyAV only: no model library is imported here.
"""
