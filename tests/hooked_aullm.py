"""``aullm`` with the tests' fold code: the whole command line, whose sweeps, reports and exports train
``sweep_helpers``' cheap fold (``AULLM_TEST_FOLD`` names another of its fold functions) and read its
tiny caches. The public command line names no code to import; this passes it as ``app(obj=FoldCode(...))``."""

from __future__ import annotations

import os
import sys

import sweep_helpers

from orchestration.cli.main import app
from orchestration.folds.trainable import FoldCode


def main() -> None:
    fold_fn = getattr(sweep_helpers, os.environ.get("AULLM_TEST_FOLD", "quick_fold"))
    sys.exit(app(obj=FoldCode(fold_fn=fold_fn, cache_loader=sweep_helpers.load_tiny_cache)))


if __name__ == "__main__":
    main()
