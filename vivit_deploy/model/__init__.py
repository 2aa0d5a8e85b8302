"""The model: ViViT in one file, its configuration, and its checkpoints in the Hugging Face layout.

- ``config``: ``VivitConfig``, a frozen dataclass that reads and writes transformers' ``config.json``;
- ``modeling``: the model, top to bottom, with transformers' parameter names;
- ``hf_layout``: the checkpoint layout's file names, where a checkpoint lives (a directory or a Hub
  snapshot), writing one;
- ``checkpoint``: ``load_model`` and the weight layouts it reads;
- ``io_spec``: the input and output names, layout and batch range, declared once;
- ``probes``: the hidden states per-layer drift compares, and their stable names in every export.

Imports no backend but torch (and that only in ``modeling`` and where weights are read).
"""
