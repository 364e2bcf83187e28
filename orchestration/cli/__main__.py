"""``python -m orchestration.cli`` runs the ``aullm`` command."""

from orchestration.cli.main import main

main()
