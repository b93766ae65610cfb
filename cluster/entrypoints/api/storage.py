"""The server's data directory: what each request writes, who may read it, and for how long.

    images/{token}/               an images request; `token` is 128 random bits, the capability
                                  its `url` answers carry (kept only for `url` answers)
    multi-image/{owner}/{name}/   a multi-image request, in its key's own space (`owner`)

Everything is swept once past the server's time to live; what a run leaves beside its folder
(journal, staging) goes when its request ends, however it ends, and when the server starts.
"""

from __future__ import annotations

import re
import secrets
import shutil
import threading
import time
from pathlib import Path

from cluster.errors import ImageGenError

TOKEN = re.compile(r"[0-9a-f]{32}")
# a folder name a client picks: one plain path segment
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.png")
SWEEP_EVERY_S = 60.0
RUN_MARK = ".multi-image-"  # what a run keeps beside its folder: .{name}.multi-image-journal, -staging-..., -retired-...


class DataDir:
    def __init__(self, root: Path, ttl_s: float):
        self.root = root
        self.ttl_s = ttl_s
        self.images = root / "images"
        self.multi = root / "multi-image"
        self._swept = float("-inf")
        self._writing: set[Path] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Folders made, and what requests of an earlier server left half-done removed (nothing
        runs yet: a journal or a staging folder here is an abandoned one)."""
        self.images.mkdir(parents=True, exist_ok=True)
        self.multi.mkdir(parents=True, exist_ok=True)
        for parent in [self.images, *self._owners()]:
            for entry in parent.iterdir():
                if entry.name.startswith("."):
                    _remove(entry)

    # --- where a request writes ---------------------------------------------------------

    def new_request(self) -> tuple[str, Path]:
        token = secrets.token_hex(16)
        return token, self.images / token

    def multi_folder(self, owner: str, name: str | None) -> Path:
        """`name` in `owner`'s space (a random one when absent); IMG_016 for a name that is not one
        plain folder name."""
        if name is None:
            name = secrets.token_hex(16)
        if not isinstance(name, str) or not FOLDER_NAME.fullmatch(name) or RUN_MARK in name:
            raise ImageGenError("IMG_016", "folder-name must be one plain folder name: letters, digits, '.', '_' "
                                           "or '-', starting with a letter or digit, at most 128 characters.")
        return self.multi / owner / name

    def claim(self, folder: Path) -> None:
        """`folder` is this request's until `release`; IMG_016 when another request writes it."""
        with self._lock:
            if folder in self._writing:
                raise ImageGenError("IMG_016", f"folder-name {folder.name!r} is being written by another request; "
                                               "wait for it to finish or pick another name.")
            self._writing.add(folder)

    def release(self, folder: Path, keep: bool) -> None:
        """The request is over: what its run left beside the folder goes (and the folder itself
        unless `keep`)."""
        try:
            for leftover in folder.parent.glob(f".{folder.name}{RUN_MARK}*"):
                _remove(leftover)
            if not keep:
                _remove(folder)
        finally:
            with self._lock:
                self._writing.discard(folder)

    # --- who may read what, and for how long ----------------------------------------------

    def image(self, folder: Path, filename: str) -> Path:
        """An image of `folder`, while it is within its time to live; IMG_002 otherwise."""
        path = folder / "images" / filename
        if not FILE_NAME.fullmatch(filename) or not path.is_file() or self._expired(folder, time.time()):
            raise ImageGenError("IMG_002", "no such image (or it expired).")
        return path

    def request_image(self, token: str, filename: str) -> Path:
        if not TOKEN.fullmatch(token):
            raise ImageGenError("IMG_002", "no such image (or it expired).")
        return self.image(self.images / token, filename)

    def multi_image(self, owner: str, name: str, filename: str) -> Path:
        if not FOLDER_NAME.fullmatch(name):
            raise ImageGenError("IMG_002", "no such image (or it expired).")
        return self.image(self.multi / owner / name, filename)

    def sweep_if_due(self) -> None:
        """Folders past their time to live go, so a long-running server does not fill its disk; at
        most once a minute, since it lists every kept folder. Blocking: call it off the event loop."""
        now = time.monotonic()
        with self._lock:
            if now - self._swept < SWEEP_EVERY_S:
                return
            self._swept = now
            writing = set(self._writing)
        wall = time.time()
        for parent in [self.images, *self._owners()]:
            for folder in _entries(parent):
                if folder not in writing and self._expired(folder, wall):
                    _remove(folder)

    def _expired(self, folder: Path, now: float) -> bool:
        try:
            return folder.stat().st_mtime < now - self.ttl_s
        except OSError:
            return True

    def _owners(self) -> list[Path]:
        return [p for p in _entries(self.multi) if p.is_dir()]


def _entries(parent: Path) -> list[Path]:
    try:
        return list(parent.iterdir())
    except OSError:
        return []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
