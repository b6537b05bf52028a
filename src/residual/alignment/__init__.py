"""Alignment of units to a task (paper section 5, METHOD section 9): zero-shot classifiers, spectral features, the ResiDual variants, their training loop and one training run."""
