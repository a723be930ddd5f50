"""The version, kept in one place so packaging and telemetry agree."""

__all__ = ["__version__"]

__version__ = "0.1.0"
