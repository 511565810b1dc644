"""Unsupervised domain adaptation by anomaly scarcity: dominant cluster + DSVDD + InfoNCE (UDA
paper)."""

from .clustering import DominantCluster, dominant_cluster, kmeans
from .config import UDAConfig
from .losses import dsvdd_loss, info_nce

__all__ = ["DominantCluster", "UDAConfig", "dominant_cluster", "dsvdd_loss", "info_nce", "kmeans"]
