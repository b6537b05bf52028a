"""The version of the pretraining code, a param of the rule that writes its weights.

Plain strings (no torch): the workflow reads them when it parses.
"""

PRETRAIN_VERSION = "pretrain/1"  # models/pretrain.py: bump when a change to this module changes the weights it writes
