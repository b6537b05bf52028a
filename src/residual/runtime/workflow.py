"""What every workflow script does around its work: log to the rule's log, set CPU threads."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from residual.config.errors import ConfigError
from residual.io.atomic import WriteError


@contextmanager
def rule_context(snakemake: Any) -> Iterator[logging.Logger]:
    """Send stdout, stderr and logging to the rule's log file and use the rule's threads."""
    # Only in jobs that compute with torch (their modules import it before this runs): a table or
    # chart job must not pay seconds to import it for nothing.
    if (torch := sys.modules.get("torch")) is not None:
        torch.set_num_threads(max(1, int(snakemake.threads)))
    with open(snakemake.log[0], "w", buffering=1) as log:
        sys.stdout = sys.stderr = log
        logging.basicConfig(stream=log, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
        logger = logging.getLogger(f"residual.{snakemake.rule}")
        try:
            yield logger
        except (WriteError, ConfigError) as error:  # the message names the file or key and what to do
            logger.error("rule %s failed: %s", snakemake.rule, error)
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            raise SystemExit(str(error)) from None  # one line on the terminal, no traceback
        except BaseException:
            logger.exception("rule %s failed", snakemake.rule)
            raise
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
