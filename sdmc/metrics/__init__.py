"""Sample-quality metrics: FID / IS (TF-Inception port) and the offline digits-FID / digits-IS.

``fid``: Fréchet distance, Inception Score, ``.npz`` reference statistics; ``inception``: the
``pt_inception-2015-12-05`` network of pytorch-fid / pytorch-ddpm (local weights); ``digits``: a small
shipped classifier for the bundled digits data; ``evaluate``: what ``sdmc eval`` runs.
"""

from .fid import (
    MetricError,
    dataset_statistics,
    feature_statistics,
    frechet_distance,
    inception_score,
    load_stats,
    save_stats,
)

__all__ = [
    "MetricError",
    "dataset_statistics",
    "feature_statistics",
    "frechet_distance",
    "inception_score",
    "load_stats",
    "save_stats",
]
