"""Residual units (paper section 2, METHOD section 1): names and layout, the exact map to output space, decomposition of a batch, the Parquet unit store and encoding a split into it."""
