"""Spectral geometry of every unit (paper section 3, METHOD sections 4-6): per-unit PCA, intrinsic dimension, similarity across datasets, and their tables."""
