"""Datasets: where images come from (`sources`) and how they are split (`splits`)."""
