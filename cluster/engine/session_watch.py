"""An embedded Ray instance ends with the process that started it, however that process ends.

Ray ties the head's own processes (GCS, raylet, monitors) to their starter with the kernel's
parent-death signal, so they die with it. What the raylet started does not: its agents see the
raylet gone at once but then wait up to 60 s on the dead GCS (Ray's error report has a fixed
60 s timeout) before they exit, and the session folder under /tmp/ray is never removed.

So an owner that starts an embedded instance also starts this script, as a process of its own
(its own session: Ctrl-C and a signal to the owner's process group do not reach it), with a
pipe on its stdin. The owner that ends normally writes ``done`` first (it stopped Ray and removed
the folder itself). An end of the pipe without it means the owner died (SIGKILL, a crash): the
session's remaining processes are stopped and its folder removed, at once.

Each such session folder also holds an owner file, so the next embedded start removes the
sessions whose owner and watcher both died (`sweep_orphans`). A folder without one (`ray start`,
a cluster that outlives its runs) is never touched.

Standard library only: it runs as a plain script beside a dying owner, without the project's imports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

OWNER_FILE = "kamui-owner.json"
DONE = b"done"


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a pid from its reuse), or None
    when no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 else None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def session_processes(session: Path, ray_dir: str | None) -> list[int]:
    """The Ray processes of one session on this machine: Ray's (titled `ray::...`, or run from
    Ray's installation `ray_dir`) whose command line names the session's folder (the head's) or
    which hold a file open in it (what the raylet started: agents and workers log there, and their
    titles name nothing). A user's `tail -f` of a log is not Ray's. Empty where /proc is not there."""
    name, prefix = session.name.encode(), str(session) + os.sep
    installed = (ray_dir.rstrip(os.sep) + os.sep).encode() if ray_dir else None
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        cmdline = _read(entry / "cmdline")
        if not (cmdline.startswith(b"ray::") or (installed and any(a.startswith(installed) for a in cmdline.split(b"\0")))):
            continue
        if name in cmdline or _holds_file_in(entry, prefix):
            found.append(int(entry.name))
    return found


def _holds_file_in(process: Path, prefix: str) -> bool:
    try:
        descriptors = list((process / "fd").iterdir())
    except OSError:
        return False
    for fd in descriptors:
        try:
            if os.readlink(fd).startswith(prefix):
                return True
        except OSError:
            continue
    return False


def stop_processes(pids: list[int], grace_s: float = 1.0) -> None:
    """SIGTERM, then SIGKILL for what is still there after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.05)
        pids = [pid for pid in pids if _alive(pid)]
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2:][:1] not in ("Z", "X")  # a zombie has ended: it only waits to be reaped


def clean_session(session: Path, ray_dir: str | None, keep_folder: bool = False,
                  latest_before: str | None = None) -> None:
    """Stop what is left of `session` and remove its folder (`keep_folder`: leave it for reading)."""
    stop_processes(session_processes(session, ray_dir))
    if keep_folder:  # and never swept by a later start
        (session / OWNER_FILE).unlink(missing_ok=True)
        return
    remove_folder(session, latest_before)


def remove_folder(session: Path, latest_before: str | None = None) -> None:
    """The session's folder; `session_latest` goes back to what it pointed at before (when that
    still exists) if it pointed at this one."""
    if not session.name.startswith("session_"):
        return
    for _ in range(3):  # a process ending meanwhile may write a last line
        shutil.rmtree(session, ignore_errors=True)
        if not session.exists():
            break
        time.sleep(0.2)
    latest = session.parent / "session_latest"
    try:
        if latest.is_symlink() and Path(os.readlink(latest)).name == session.name:
            latest.unlink()
            if latest_before and Path(latest_before).exists():
                latest.symlink_to(latest_before)
    except OSError:
        pass


def write_owner(session: Path, owner_pid: int, ray_dir: str) -> None:
    record = {"owner_pid": owner_pid, "owner_start": process_start(owner_pid), "ray_dir": ray_dir}
    (session / OWNER_FILE).write_text(json.dumps(record), encoding="utf-8")


def owner_gone(record: dict) -> bool:
    pid = record.get("owner_pid")
    if not isinstance(pid, int):
        return False
    started = process_start(pid)
    return started is None or (record.get("owner_start") is not None and started != record["owner_start"])


def sweep_orphans(root: Path) -> list[Path]:
    """Remove the embedded sessions under `root` whose owner is gone (and their processes, if any
    remain); returns the folders removed. Sessions of a live owner, and folders without an owner
    file, are left alone."""
    removed = []
    for owner_file in root.glob(f"session_*/{OWNER_FILE}"):
        if owner_file.parent.is_symlink():  # session_latest
            continue
        try:
            record = json.loads(owner_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and owner_gone(record):
            ray_dir = record.get("ray_dir")
            clean_session(owner_file.parent, ray_dir if isinstance(ray_dir, str) else None)
            removed.append(owner_file.parent)
    return removed


def main(argv: list[str]) -> int:
    """session_watch.py SESSION_DIR RAY_DIR [--keep-folder] [--latest-before PATH]"""
    session, ray_dir = Path(argv[0]), argv[1]
    keep = "--keep-folder" in argv
    latest_before = argv[argv.index("--latest-before") + 1] if "--latest-before" in argv else None
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    received = b""
    while True:  # until the owner closes the pipe, or dies and the kernel closes it
        chunk = os.read(0, 64)
        if not chunk:
            break
        received += chunk
    if received.strip() == DONE:
        return 0
    clean_session(session, ray_dir, keep, latest_before)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
