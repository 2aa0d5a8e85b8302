"""`vivit-deploy compare`: the job that says how far each backend drifts from PyTorch fp32 and whether it still
classifies the same, on the clips a user brings.

- ``matrix``: every backend x precision that runs here (each backend says which of its own), and the files each needs,
  exported into a working directory (``bench`` exports with it too);
- ``html_report``: one self-contained page of a comparison;
- ``job``: from options to report.

It exports the files it compares, so it sits above ``vivit_deploy.export``; the measuring tools it uses (tolerances,
inputs, statistics, per-layer drift) are ``vivit_deploy.accuracy``'s, which the exporter checks its own files with.
"""
