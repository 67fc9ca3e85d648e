"""Minimal sd_notify (standard library only); does nothing when NOTIFY_SOCKET is unset."""

from __future__ import annotations

import os
import socket

__all__ = ["notify"]


def notify(*lines: str) -> bool:
    """Send READY=1, WATCHDOG=1, STATUS=..., STOPPING=1 (one datagram) to systemd; True if sent."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):  # abstract namespace socket
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(addr)
        s.sendall("\n".join(lines).encode())
    return True
