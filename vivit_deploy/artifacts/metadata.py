"""What an exported file knows about itself: model config, labels, preprocessing, I/O and provenance.

An ONNX file carries it as ``metadata_props`` (string keys and values), so that a runtime can rebuild
the labels and the preprocessor from the file alone; the TensorRT engine sidecar reuses the same record.
Numpy-free and torch-free; reading an ONNX file's props needs only the ``onnx`` package.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vivit_deploy.model.config import VivitConfig
from vivit_deploy.model.registry import config_from_dict
from vivit_deploy.errors import ConfigError, ModelFileError
from vivit_deploy.model.io_spec import InputSpec
from vivit_deploy.video.preprocessing import PreprocessorConfig

FORMAT_VERSION = "1"
PREFIX = "vivit_deploy."
PRECISIONS = ("fp32", "fp16", "int8", "fp8")  # of the graph; int8/fp8: Q/DQ on the weight MatMuls, the rest fp32
QUANTIZED_PRECISIONS = ("int8", "fp8")  # made by quantizing the fp32 graph, with calibration data


@dataclass(frozen=True)
class DeployMetadata:
    """Everything a runtime needs besides the weights; ``provenance`` is informational (versions, source)."""

    config: VivitConfig
    preprocessor: PreprocessorConfig
    input: InputSpec
    precision: str  # precision of the graph's arithmetic; its inputs and outputs are float32 either way
    output_name: str = "logits"
    provenance: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None  # int8: what it was calibrated on and what was quantized
    kept_fp32: tuple[str, ...] = ()  # layers or parts kept in fp32 in a low-precision graph ("2", "2.mlp", ...)
    merge_tokens: tuple[int, ...] = ()  # ToMe's r per layer in the graph (empty: no merging)
    token_counts: tuple[int, ...] = ()  # with merging: the tokens each layer hands on (the class token included)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(self.config.id2label)

    @property
    def calibrated_range(self) -> tuple[float, float] | None:
        """The range of the preprocessed clips an int8/fp8 file was calibrated on; its ranges hold inside it."""
        bounds = (self.calibration or {}).get("input_range")
        return None if bounds is None else (float(bounds[0]), float(bounds[1]))

    def to_props(self) -> dict[str, str]:
        """String key/value pairs for ONNX ``metadata_props`` (JSON values under ``vivit_deploy.*`` keys)."""
        return {
            PREFIX + "format_version": FORMAT_VERSION,
            PREFIX + "config": json.dumps(self.config.to_dict(), sort_keys=True),
            PREFIX + "preprocessor": json.dumps(self.preprocessor.to_dict(), sort_keys=True),
            PREFIX + "input": json.dumps(self.input.to_dict(), sort_keys=True),
            PREFIX + "output_name": self.output_name,
            PREFIX + "precision": self.precision,
            PREFIX + "provenance": json.dumps(self.provenance, sort_keys=True),
            **({} if self.calibration is None else {PREFIX + "calibration": json.dumps(self.calibration, sort_keys=True)}),
            **({PREFIX + "kept_fp32": json.dumps(list(self.kept_fp32))} if self.kept_fp32 else {}),
            **({PREFIX + "merge_tokens": json.dumps({"r": list(self.merge_tokens), "tokens": list(self.token_counts)})}
               if any(self.merge_tokens) else {}),
        }

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "the model file") -> "DeployMetadata":
        """Rebuild from ``metadata_props``; a file not written by ``vivit-export`` gets a :class:`ModelFileError`."""
        if PREFIX + "config" not in props:
            raise ModelFileError(
                f"{source} has no vivit_deploy metadata (model config, labels, preprocessing); "
                "export it with `vivit-export` so runtimes can rebuild them from the file"
            )
        version = props.get(PREFIX + "format_version")
        if version != FORMAT_VERSION:
            raise ModelFileError(f"{source}: metadata format {version!r} is not the one this vivit_deploy reads ({FORMAT_VERSION})")
        try:
            precision = props[PREFIX + "precision"]
            if precision not in PRECISIONS:
                raise ConfigError(f"unknown precision {precision!r}")
            return cls(
                config=config_from_dict(json.loads(props[PREFIX + "config"])),
                preprocessor=PreprocessorConfig.from_dict(json.loads(props[PREFIX + "preprocessor"])),
                input=InputSpec.from_dict(json.loads(props[PREFIX + "input"])),
                precision=precision,
                output_name=props.get(PREFIX + "output_name", "logits"),
                provenance=json.loads(props.get(PREFIX + "provenance", "{}")),
                calibration=json.loads(props[PREFIX + "calibration"]) if PREFIX + "calibration" in props else None,
                kept_fp32=tuple(json.loads(props.get(PREFIX + "kept_fp32", "[]"))),
                **_merging(props.get(PREFIX + "merge_tokens")),
            )
        except (KeyError, json.JSONDecodeError, ConfigError) as exc:
            raise ModelFileError(f"{source}: unreadable vivit_deploy metadata ({exc})") from exc


def _merging(text: str | None) -> dict[str, tuple[int, ...]]:
    if text is None:
        return {}
    merging = json.loads(text)
    return {"merge_tokens": tuple(int(r) for r in merging["r"]), "token_counts": tuple(int(n) for n in merging["tokens"])}


def load_onnx_graph(path: str | os.PathLike):
    """An ONNX file's ``ModelProto`` without external weights; a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError, onnx others
        raise ModelFileError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from exc


def read_onnx_metadata(path: str | os.PathLike) -> DeployMetadata:
    """The :class:`DeployMetadata` of an ONNX file written by ``vivit-export`` (weights are not read)."""
    model = load_onnx_graph(path)
    return DeployMetadata.from_props({p.key: p.value for p in model.metadata_props}, source=str(path))
