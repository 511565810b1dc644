"""The PatchCore engine: backbone features, the memory bank and its search, scores and heatmaps,
the threshold, and the drift reference a version carries."""
