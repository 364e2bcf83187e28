"""The list of command modules; each exposes ``register(app)``."""

from orchestration.cli import data, demo, export, report, sweep, train, ui

REGISTRY = [data.register, sweep.register, report.register, export.register, ui.register, demo.register, train.register]
