"""Unsupervised domain adaptation by anomaly scarcity: dominant cluster + DSVDD + InfoNCE (UDA
paper)."""

from patchshift.core.uda.clustering import DominantCluster, dominant_cluster, kmeans
from patchshift.core.uda.losses import dsvdd_loss, info_nce
from patchshift.core.uda.uda_config import UDAConfig

__all__ = ["DominantCluster", "UDAConfig", "dominant_cluster", "dsvdd_loss", "info_nce", "kmeans"]
