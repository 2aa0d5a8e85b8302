"""Serving on NVIDIA Triton Inference Server: a model repository for every deployable file (the ``triton://``
runtime that reads one is ``vivit_deploy.runtimes.triton_runtime``).

- ``repository.write_repository`` (`vivit-deploy triton-repo`): config.pbtxt from the file's metadata,
  the model file, labels, and the uint8-frames ensemble;
- ``model_config``: the config text, parsed into Triton's own ``ModelConfig`` and checked against the file;
- ``python_backend``: the models Triton's python backend runs (preprocessing; our runtimes);
- ``local_server``: a tritonserver on 127.0.0.1 (tests, trying a repository).
"""
