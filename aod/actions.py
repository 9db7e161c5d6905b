"""Quick actions: the table of what a capture collects (collect layer).

Placeholder; the table is filled in by the collector work. Names are stable: the
config refers to them.
"""

from __future__ import annotations

ACTION_NAMES: tuple[str, ...] = (
    "kernel_log",
    "journal",
    "syslog",
    "cifs_debug",
    "cifs_stats",
    "cifs_open_files",
    "mounts",
    "smbinfo",
)
