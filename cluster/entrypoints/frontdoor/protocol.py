"""The front door's wire and where it is: JSON lines over a UNIX socket in a folder of the owner's.

Only the cluster's owner may use it: the folder is 0700 and owned by them (an existing one that is
not is refused, so another user cannot plant a socket or read the traffic), the socket is 0600, and
the front door checks each peer's uid with SO_PEERCRED besides. Stdlib only: the client imports it.

A conversation: the client says `hello`; the front door answers `ready` (or `refused`); the client
sends one request (`generate` or `batch`: the command line's inputs, its working directory and the
environment the run reads) and, at any time, `signal` (the client was signalled); the front door
streams `event` (a run event), `say` (a line for the client's stderr) and ends with `done` (what to
print, the exit status) or `error` (an IMG error before anything ran).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import threading
from pathlib import Path

from cluster import env

VERSION = 1
SOCKET_NAME = "front-door.sock"
# Seconds a front door has to answer `hello` before the client runs directly instead
ANSWER_S = 3.0


def socket_path() -> Path:
    return env.runtime_dir() / SOCKET_NAME


def private_dir(path: Path, create: bool) -> str:
    """"" when `path` is a folder only this user may enter (made so when `create` and absent), else why not."""
    if create:
        try:
            path.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass
    try:
        info = os.lstat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} is not a folder"
    if info.st_uid != os.getuid():
        return f"{path} belongs to uid {info.st_uid}, not to this user ({os.getuid()})"
    if info.st_mode & 0o077:
        return f"{path} is open to other users (mode {stat.S_IMODE(info.st_mode):o}; it must be 700)"
    return ""


def peer_uid(connection: socket.socket) -> int:
    """The uid of the process at the other end of a UNIX socket, as the kernel recorded it at connect."""
    creds = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def refusal(peer: int, owner: int | None = None) -> str:
    """Why a peer with uid `peer` may not use the front door of `owner` (this process's user); "" when it may."""
    owner = os.getuid() if owner is None else owner
    return "" if peer == owner else f"this front door serves uid {owner} only, not {peer}"


class Wire:
    """One end of a conversation: whole JSON objects, one a line; sends from several threads are kept whole."""

    def __init__(self, connection: socket.socket):
        self.connection = connection
        self._reader = connection.makefile("rb")
        self._lock = threading.Lock()
        self.closed = False

    def send(self, message: dict) -> bool:
        """False when the other end is gone."""
        data = (json.dumps(message, default=str, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self.closed:
                return False
            try:
                self.connection.sendall(data)
                return True
            except OSError:
                self.closed = True
                return False

    def receive(self) -> dict | None:
        """The next message; None when the other end closed (or sent something that is not one)."""
        try:
            line = self._reader.readline()
        except (OSError, ValueError):
            return None
        if not line:
            return None
        try:
            message = json.loads(line)
        except ValueError:
            return None
        return message if isinstance(message, dict) else None

    def close(self) -> None:
        with self._lock:
            self.closed = True
        for close in (self._reader.close, lambda: self.connection.shutdown(socket.SHUT_RDWR), self.connection.close):
            try:
                close()
            except OSError:
                pass
