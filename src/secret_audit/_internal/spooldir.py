"""Where the spool lives by default: a per-user state directory, one folder per destination.

One folder per destination (protocol, endpoint and headers, hashed) so that records spooled for
one endpoint or tenant token are never replayed to another by a different application of the
same user.
"""

from __future__ import annotations

import hashlib
import os
import pwd
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "DESTINATION_FILE", "EMPTY_FILE", "SPOOL_FILE", "default_spool_dir", "leftover_spool",
    "prepare_spool_dir", "state_home",
]

# Written beside the spool so an operator can tell what a folder holds (never the headers).
DESTINATION_FILE = "destination.txt"
# The spool's own file, named here so that start-up can look for a leftover one without importing sqlite3.
SPOOL_FILE = "audit-spool.sqlite3"
# Beside the spool while nothing waits in it (the spool keeps it true): a spool once opened stays on
# disk, and without this every later process would start its stream's threads at once to replay nothing.
EMPTY_FILE = "audit-spool.empty"


def leftover_spool(directory: str | None) -> bool:
    """Whether a spool waits in ``directory``: its stream's worker starts at once to replay it, not at a
    first access that a process may never make."""
    if not directory:
        return False
    folder = str(directory)
    spool, empty = os.path.join(folder, SPOOL_FILE), os.path.join(folder, EMPTY_FILE)
    return os.path.exists(spool) and not os.path.exists(empty)


def state_home(env: Mapping[str, str]) -> Path | None:
    """``$XDG_STATE_HOME``, else ``~/.local/state``; None when neither is an absolute path.

    A relative path is ignored, as the XDG spec says, so the spool never lands in the current
    working directory.
    """
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg)
    home = env.get("HOME") or _passwd_home()
    if home and os.path.isabs(home) and home != "/":
        return Path(home) / ".local" / "state"
    return None


def _passwd_home() -> str | None:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except (KeyError, OSError):
        return None


def default_spool_dir(protocol: str, endpoint: str, headers: str, env: Mapping[str, str]) -> str | None:
    """The default spool folder for one destination, or None when there is no state directory."""
    base = state_home(env)
    if base is None:
        return None
    key = hashlib.sha256(f"{protocol}\n{endpoint}\n{headers}".encode()).hexdigest()[:16]
    return str(base / "secret-audit" / "spool" / key)


def _without_userinfo(endpoint: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(endpoint)
    if "@" not in parts.netloc:
        return endpoint
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def prepare_spool_dir(directory: str, protocol: str, endpoint: str) -> str | None:
    """Create the folder and check it can be written; return why not, or None when it can."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable"
        marker = path / DESTINATION_FILE
        if not marker.exists():
            marker.write_text(f"{protocol} {_without_userinfo(endpoint)}\n")
    except OSError as exc:
        return f"cannot create or write {path}: {exc.strerror or type(exc).__name__}"
    return None
