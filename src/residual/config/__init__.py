"""The run's configuration: JSON schema with defaults, validation, and preflight checks against this machine."""
