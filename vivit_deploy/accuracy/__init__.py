"""How far a backend drifts from PyTorch fp32, where it starts to, and whether it still classifies the same.

Rooms, from the measuring tools up to the jobs that use them:

- ``tolerances``: how far each precision may drift, as data;
- ``inputs``: the clips to compare on (videos, labelled synthetic clips, random, saved ``.npz``);
- ``statistics``: logits against the reference: error statistics, top-k agreement, accuracy, verdicts;
- ``layers``: per-layer drift: the hidden states at the probe points (``vivit_deploy/model/probes.py``)
  against PyTorch hooks, the first layer out of tolerance and what kind of op broke it;
- ``matrix``: every backend x precision that runs here, and the files each needs;
- ``job``: ``vivit-deploy compare``, from options to report.

The exporter checks its own files with ``tolerances``, ``statistics`` and ``layers``; ``matrix`` and
``job`` export the files they compare, so they sit above ``vivit_deploy.export`` (the import contracts
in ``.importlinter`` say so). Nothing is imported here: each room is imported by name.
"""
