"""The error a config mistake raises: its own torch-free module, since every workflow script catches it."""

from __future__ import annotations


class ConfigError(ValueError):
    """The config does not match the schema; the message names the key and what to do."""
