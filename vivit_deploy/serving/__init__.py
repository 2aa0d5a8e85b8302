"""Serving on NVIDIA Triton Inference Server: a model repository for every deployable file, and a
Triton endpoint as one more runtime.

- ``repository.write_repository`` (`vivit-deploy triton-repo`): config.pbtxt from the file's metadata,
  the model file, labels, and the uint8-frames ensemble;
- ``model_config``: the config text, parsed into Triton's own ``ModelConfig`` and checked against the file;
- ``python_backend``: the models Triton's python backend runs (preprocessing; our runtimes);
- ``triton_client``: ``load_runtime("triton://host:port/model")``.
"""
