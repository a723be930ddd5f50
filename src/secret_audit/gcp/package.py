"""The google-cloud-secret-manager versions this instrumentation supports, for the launcher's check."""

__all__ = ["_instruments"]

_instruments = ("google-cloud-secret-manager >= 2.16.0",)
