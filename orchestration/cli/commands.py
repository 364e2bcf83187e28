"""The list of command modules; each exposes ``register(app)``."""

from orchestration.cli import data, demo, export, report, slurm, sweep, train, ui

REGISTRY = [data.register, sweep.register, slurm.register, report.register, export.register, ui.register, demo.register, train.register]
