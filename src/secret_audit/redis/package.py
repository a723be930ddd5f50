"""The redis-py versions this instrumentation supports, for the launcher's dependency check."""

__all__ = ["_instruments"]

_instruments = ("redis >= 4.2.0",)
