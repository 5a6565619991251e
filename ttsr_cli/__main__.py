"""Allow ``python -m ttsr_cli``."""

from ttsr_cli.cli import main

main()
