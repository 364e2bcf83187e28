"""The list of command modules; each exposes ``register(app)``."""

from orchestration.cli import data, demo, export, report, train, tune, ui

REGISTRY = [data.register, tune.register, report.register, export.register, ui.register, demo.register, train.register]
