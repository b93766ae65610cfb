"""An embedded Ray instance does not outlive its owner: a SIGKILLed `generate` or `serve` leaves
no Ray process and no session folder behind (cluster/engine/session_watch.py), and a session whose owner
and watcher both died is removed by the next embedded start.

Each test runs its Ray in a RAY_TMPDIR of its own, so what it asserts about /tmp/ray is its own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cluster.engine import session_watch

ROOT = Path(__file__).resolve().parent.parent
GONE_WITHIN_S = 15  # the agents alone would linger 60 s (Ray's fixed timeout on the dead GCS)

HOLD_RAY = """
import time
from cluster.engine.ray_runtime import RayRuntime

with RayRuntime("local") as runtime:
    print(runtime.session_dir, flush=True)
    time.sleep(600)
"""


def ray_env(temp: str) -> dict:
    env = dict(os.environ, RAY_TMPDIR=temp, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return env


def descendants(pid: int) -> set[int]:
    """Every process started, directly or not, by `pid`."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pids: set[int]) -> set[int]:
    """The ones still running (a zombie has ended; it waits only to be reaped by init)."""
    alive = set()
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2:][:1] not in ("Z", "X"):
            alive.add(pid)
    return alive


def watchers(session: Path) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"session_watch.py" in cmdline and str(session).encode() in cmdline:
                found.add(int(entry.name))
    return found


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def kill_and_check(process: subprocess.Popen, session: Path) -> None:
    """SIGKILL the owner: everything it started (the head, the agents, the workers, Serve's actors)
    and its session's watcher end, and the session folder goes, within GONE_WITHIN_S."""
    ray_processes = descendants(process.pid)
    assert len(ray_processes) >= 4, ray_processes  # GCS, raylet and the agents at least
    watcher = watchers(session)
    assert len(watcher) == 1 and session.is_dir() and (session / session_watch.OWNER_FILE).is_file()
    process.kill()
    process.wait(timeout=10)
    assert wait_until(lambda: not running(ray_processes | watcher), GONE_WITHIN_S), \
        [Path(f"/proc/{p}/cmdline").read_bytes().rstrip(b"\0")[:80] for p in running(ray_processes | watcher)]
    assert wait_until(lambda: not session.exists(), 2), sorted(p.name for p in session.iterdir())


def test_a_sigkilled_owner_takes_its_embedded_ray_and_its_session_folder_with_it(tmp_path):
    temp = tempfile.mkdtemp(prefix="kr", dir="/tmp")  # short: Ray's socket paths live under it
    process = subprocess.Popen([sys.executable, "-c", HOLD_RAY], cwd=tmp_path, env=ray_env(temp),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        session = Path(process.stdout.readline().strip())
        assert session.name.startswith("session_"), process.stderr.read()[-2000:]
        time.sleep(2)  # the raylet's agents and first workers up
        kill_and_check(process, session)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow  # its own Ray and Serve (~30 s here): `-m slow`, and CI
def test_a_sigkilled_serve_leaves_no_ray_processes_and_no_session_folder(tmp_path):
    from tests.test_serve import free_port

    temp = tempfile.mkdtemp(prefix="kr", dir="/tmp")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "cluster.entrypoints.cli", "serve", "--port", str(port), "--address", "local",
                                "--data-dir", str(tmp_path / "data"), "--scorer", "none"],
                               cwd=ROOT, env=ray_env(temp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        line = process.stdout.readline()
        assert "serving the OpenAI Images API" in line, process.stderr.read()[-2000:]
        (session,) = [p.parent for p in (Path(temp) / "ray").glob(f"session_2*/{session_watch.OWNER_FILE}")
                      if json.loads(p.read_text())["owner_pid"] == process.pid]
        kill_and_check(process, session)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


AGENT = """
import sys, time
log = open(sys.argv[1], "a")  # as a Ray agent holds its log open
print("up", flush=True)
time.sleep(600)
"""


def test_the_next_start_removes_sessions_whose_owner_died_unwatched(tmp_path):
    """A session whose owner and watcher were both killed: removed, with a Ray process still
    logging into it; a live owner's session and a folder that is not an embedded run's are kept."""
    root = tmp_path / "ray"
    dead_owner = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan, live, started = (root / f"session_2026-01-01_00-00-0{i}_000000_1" for i in range(3))
    for folder in (orphan, live, started):
        (folder / "logs").mkdir(parents=True)
    (root / "session_latest").symlink_to(orphan)
    # a leftover agent, run from "Ray's installation" as Ray's own processes are
    script = tmp_path / "site-packages" / "ray" / "agent.py"
    script.parent.mkdir(parents=True)
    script.write_text(AGENT)
    session_watch.write_owner(orphan, int(dead_owner.stdout), str(script.parent))
    session_watch.write_owner(live, os.getpid(), str(script.parent))
    agent = subprocess.Popen([sys.executable, str(script), str(orphan / "logs" / "agent.log")],
                             stdout=subprocess.PIPE, text=True)
    # a process of another program reading the same log is not Ray's, and is left alone
    reader = subprocess.Popen([sys.executable, "-c", AGENT, str(orphan / "logs" / "agent.log")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline() == reader.stdout.readline() == "up\n"
        assert session_watch.sweep_orphans(root) == [orphan]
        assert agent.wait(timeout=5) is not None and reader.poll() is None
        assert sorted(p.name for p in root.iterdir()) == sorted([live.name, started.name])  # session_latest too
    finally:
        for process in (agent, reader):
            process.kill()
            process.wait()
