"""Evaluation on labelled MVTec-layout sets: datasets, AUROC / AUPRO metrics, corruptions."""
