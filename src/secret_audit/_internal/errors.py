"""Error text reduced to what is safe to audit: a type and a prefix that cannot carry a value."""

from __future__ import annotations

import re

__all__ = ["error_type", "safe_prefix"]

# Stop before anything that usually introduces data: quotes, colons, brackets, '=' and commas.
_CUT = re.compile(r"""['"`:(\[{=,<\n]""")
_MAX = 80


def error_type(exc: BaseException) -> str:
    """The fully qualified exception class name, as OpenTelemetry's ``error.type`` recommends."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def safe_prefix(message: str) -> str:
    """Keep the leading words of a message up to the first character that tends to start data."""
    cut = _CUT.search(message)
    text = message[: cut.start()] if cut else message
    text = " ".join(text.split())[:_MAX]
    return text.rstrip(" .;")
