"""Coarse unit alignment (METHOD section 8, paper section 4): zero-shot accuracy from the stored units,
head scores on the val split, top-k head selections evaluated on the test split, and the overlap of
the selected heads across datasets."""
