"""Building deployable files from a checkpoint: ``export_onnx`` (PyTorch -> ONNX) and its graph checks.

Kept apart from :mod:`vivit_deploy.runtimes`, which only loads and runs what is built here.
"""

from vivit_deploy.export.onnx_export import DEFAULT_OPSET, ExportOptions, ExportReport, export_onnx

__all__ = ["DEFAULT_OPSET", "ExportOptions", "ExportReport", "export_onnx"]
