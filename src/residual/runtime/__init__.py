"""Where and how a job runs: the compute device, and what every workflow script does around its work."""
