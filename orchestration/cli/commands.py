"""The list of command modules; each exposes ``register(app)``."""

from orchestration.cli import data, tune

REGISTRY = [data.register, tune.register]
