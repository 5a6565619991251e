"""Installed as the package ``ttsr_cli.models`` (see pyproject.toml), so that
``importlib.resources`` finds the registry, cards and bundled weights in any install."""
