"""Retrieval curation from an uncurated image pool, after DINOv2's data pipeline (Oquab et al. 2023).

The pipeline behind ``ie-curate``: read a pool (:mod:`.pool`), embed it with an image encoder
(:mod:`.encoder`), remove near-copies (:mod:`.copies`: copy descriptors robust to crops, rescaling,
re-encoding and colour jitter, plus dHash), remove images near the target test split (leakage guard),
then select (:mod:`.retrieval`): the k nearest pool images of each target image (sample-based), the
pool clusters nearest the target sampled in proportion (cluster-based), or, untargeted, a balanced
sample over a hierarchical k-means (as Vo et al. 2024 build general pretraining sets). The selection
is written as a WebDataset with a report of what was kept and why (:mod:`.output`).
"""
