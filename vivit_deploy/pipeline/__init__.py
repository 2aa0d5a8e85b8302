"""The corpus job behind ``vivit-deploy classify``: every video of a corpus into one results file.

    from vivit_deploy.pipeline import ClassifyJob, classify_corpus

    summary = classify_corpus(["videos/"], "results.parquet", ClassifyJob(batch_size=8))

Rooms: ``inputs`` (where the videos come from), ``model`` (what the job knows of the model before
loading it), ``stages`` (decode + preprocess, batched inference, rows: shared by every executor),
``results`` (parts, resume, the atomic final file), ``local`` (processes on this machine) and
``ray_job`` (Ray Data on a cluster), tied together by ``job``.
"""

from vivit_deploy.pipeline.job import ClassifyJob, JobSummary, classify_corpus, default_workers
from vivit_deploy.pipeline.ray_job import LOCAL_RAY

__all__ = ["LOCAL_RAY", "ClassifyJob", "JobSummary", "classify_corpus", "default_workers"]
