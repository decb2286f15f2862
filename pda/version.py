"""The package's one version: pyproject.toml reads it (dynamic), the OpenAPI document and
the images' tags follow it. A module of its own so the API can read it without importing
``pda``'s lazy top level (which names :mod:`pda.library`, the torch side)."""

__version__ = "0.2.0"
