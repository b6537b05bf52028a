"""Results as tables a reader opens: Parquet, CSV and Markdown."""
