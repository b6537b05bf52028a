"""The fine-tuning baseline's name in tables and files, and its row label: the report's tables
compare every variant with it, so they import it from here, without importing torch."""

from __future__ import annotations

FINETUNE = "finetune"
LABEL = "fine-tune"
