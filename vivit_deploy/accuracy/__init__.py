"""How far a backend drifts from PyTorch fp32, where it starts to, and whether it still classifies the same.

Rooms, from the measuring tools up to the jobs that use them:

- ``tolerances``: how far each precision may drift, as data;
- ``inputs``: the clips to compare on (videos, labelled synthetic clips, random, saved ``.npz``);
- ``statistics``: logits against the reference: error statistics, top-k agreement, accuracy, verdicts;
- ``layers``: per-layer drift: the hidden states at the probe points (``vivit_deploy/model/probes.py``)
  against PyTorch hooks, the first layer out of tolerance and what kind of op broke it (its pieces in ``drift/``).

The exporter checks its own files with ``tolerances``, ``statistics`` and ``layers``; the compare job
(``vivit_deploy.compare``) exports the files it compares, so it sits above ``vivit_deploy.export`` (the import
contracts in ``.importlinter`` say so). Nothing is imported here: each room is imported by name.
"""
