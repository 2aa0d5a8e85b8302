"""What the models return: dataclasses whose fields are optional, read by name, by key, or as a tuple.

transformers' outputs are the example (``ModelOutput``): a field left None is not part of the output, and the output
indexes like the tuple of the fields that are set, so ``outputs.logits``, ``outputs["logits"]``, ``outputs[0]`` and
``len(outputs)`` all work as code written against transformers expects. Iterating gives the names of the fields
that are set, as iterating transformers' (a mapping) does. Numpy-free, torch-free: only the values are tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterator


@dataclass
class ModelOutput:
    """A model's output: optional fields, readable as attributes, by name or by position among the set ones."""

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, name) for name in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in self.keys()]

    def to_tuple(self) -> tuple[Any, ...]:
        """The values of the fields that are set, in field order (``return_dict=False`` gives this)."""
        return tuple(self.values())

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(f"{key!r} is not set in this {type(self).__name__} (set: {', '.join(self.keys())})")
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


@dataclass
class EncoderOutput(ModelOutput):
    """``VivitModel``'s output (transformers' ``BaseModelOutputWithPooling``)."""

    last_hidden_state: Any = None  # (B, N+1, D), after the final LayerNorm
    pooler_output: Any = None  # (B, pooler_output_size); None without a pooler
    hidden_states: tuple | None = None  # embeddings, then each layer's output: num_hidden_layers + 1 of (B, N+1, D)
    attentions: tuple | None = None  # each layer's attention probabilities (B, heads, N+1, N+1)


@dataclass
class VideoClassifierOutput(ModelOutput):
    """``VivitForVideoClassification``'s output (transformers' ``ImageClassifierOutput``)."""

    loss: Any = None  # with ``labels``: the loss of ``config.problem_type``
    logits: Any = None  # (B, num_labels)
    hidden_states: tuple | None = None
    attentions: tuple | None = None
