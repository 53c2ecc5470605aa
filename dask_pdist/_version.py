"""The package version (read by pyproject.toml, written into every store it makes)."""

__version__ = "0.1.0"
