"""The model libraries' towers, loading (`loaded`) and pretraining; importing the package imports no model library."""
