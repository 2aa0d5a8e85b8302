"""What a deployable file says about itself, read by everything that loads one.

- ``metadata``: what an exported ONNX file records (config, labels, preprocessing, input, precision,
  calibration, layers kept in fp32), and reading it back;
- ``engines``: TensorRT engine files: the two editions of TensorRT that make and run them (TensorRT
  10/11 and TensorRT for RTX, as data) and the sidecar next to every engine.

Written by ``export``, read by ``runtimes``, ``serving``, ``pipeline``; imports neither.
"""
