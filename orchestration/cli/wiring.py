"""What the command line plugs into a sweep: the fold code, MLflow tracking and the sweep's report.

The fold code is aullm_core's (``AULLM_CODE``); a program that embeds the command line passes its own
as the root context's object, ``app(obj=FoldCode(...))`` (the tests run cheap folds this way), so no
option of the public command line names code to import.
"""

from __future__ import annotations

import typer

from orchestration.folds.trainable import AULLM_CODE, FoldCode
from orchestration.sweep.run import SweepHooks
from orchestration.sweep.settings import SweepSettings

__all__ = ["fold_code", "sweep_hooks"]


def fold_code(ctx: typer.Context) -> FoldCode:
    """The fold code the command line was started with (``app(obj=...)``), else aullm_core's."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, FoldCode) else AULLM_CODE


def sweep_hooks(code: FoldCode = AULLM_CODE) -> SweepHooks:
    """A sweep tracked in MLflow whose report is written when it finishes."""
    from orchestration.tracking.mlflow_tracker import MlflowTracker

    def report(settings: SweepSettings) -> None:
        from orchestration.reports.report import build_report

        build_report(settings.workdir, settings.name, tracking_uri=settings.resolved_tracking_uri,
                     progress=False, code=code)

    return SweepHooks(code=code, tracker=MlflowTracker, report=report)
