"""The run guard: a stopped or orphaned run still ends with its partial report, within seconds,
whatever state Ray's processes are in.

A signal to the whole process group (what `timeout`, a cancelled CI job and `systemctl stop`
send) reaches Ray's own processes too; the driver's orderly shutdown can then wait a minute on a
cluster that is gone. So the guard does not trust the orderly path to finish:
- the first stop signal arms a deadline: if the run has not started writing its report by then,
  the guard writes it from the run's journal;
- a second signal does that at once;
- a cluster whose GCS stops answering for `lost_after_s` seconds does it with IMG_019.
Writing from the journal needs no Ray (images from disk, weight-free scores). Whoever starts
writing first — the run or the guard — writes; the guard then ends the process with the run's
exit status (130 for SIGINT, 143 for SIGTERM, 1 for a lost cluster).

Signals are seen through `signal.set_wakeup_fd`: the interpreter's C handler writes the signal's
number to a pipe the moment it arrives, so a watcher thread sees it even while the main thread is
blocked inside Ray's C++ code (where Python-level handlers would only run once it returns).

In a process that serves many runs (the warm cluster's front door), a guard must not end the
process: it is given `end` (what to do with the exit status instead) and `say` (where its lines go),
and the run it wrote for unwinds with `GuardWrote` instead of waiting for the end.
"""

from __future__ import annotations

import contextvars
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Seconds after the first signal before the guard writes in the run's place (the report is due
# within 10 s; writing takes well under one on a local disk).
DEADLINE_S = 6.0
PROBE_INTERVAL_S = 1.0


def exit_status(signum: int | None) -> int:
    return 128 + signum if signum else 1


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _end_process(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


class GuardWrote(Exception):
    """The guard wrote the run's report from its journal; the run stops where it is."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class RunGuard:
    def __init__(self, deadline_s: float = DEADLINE_S, lost_after_s: float = 4.0,
                 stop_message: str = "stopping: writing what is finished (signal again to write it at once)",
                 say: Callable[[str], None] = _to_stderr, end: Callable[[int], None] = _end_process):
        self.deadline_s = deadline_s
        self.stop_message = stop_message
        self.lost_after_s = lost_after_s
        self.say = say
        self._end = end
        self._wrote = threading.Event()
        self._rescue_context: contextvars.Context | None = None
        self.stop = threading.Event()  # the run's "stop starting work"
        self.signal: int | None = None
        self.signals = 0
        self._lock = threading.Lock()
        self._writer: str | None = None  # "run" | "guard": who writes the report
        self._rescue: Callable[[str, str], None] | None = None
        self._timer: threading.Timer | None = None
        self._watching = threading.Event()
        self.status: int | None = None  # the exit status the guard wrote with

    # --- the run's side -------------------------------------------------------------------

    def attach(self, rescue: Callable[[str, str], None]) -> None:
        """`rescue(code, message)` writes the run's partial report from its journal (no Ray), in the
        run's context (a front door's run reads its client's environment there)."""
        self._rescue_context = contextvars.copy_context()
        self._rescue = rescue

    def stand_aside(self) -> None:
        """The run found the guard writing its report: wait for the guard to end the process, or,
        where it does not (a front door), for it to finish, then unwind the run with GuardWrote."""
        self._wrote.wait()
        if self._end is _end_process:
            threading.Event().wait()
        raise GuardWrote(self.status)

    def claim(self) -> bool:
        """The run is about to write its report: True when the guard has not started to."""
        with self._lock:
            if self._writer is None:
                self._writer = "run"
            return self._writer == "run"

    def release(self) -> None:
        """The run is over (written or not): nothing more for the guard to do."""
        self._rescue = None
        self.unwatch()
        if self._timer is not None:
            self._timer.cancel()

    def watch(self, gcs_address: str) -> None:
        """Write the report with IMG_019 if the cluster's GCS stops answering."""
        self._watching.set()
        threading.Thread(target=self._watch, args=(gcs_address,), name="kamui-cluster-watch", daemon=True).start()

    def unwatch(self) -> None:
        self._watching.clear()  # before an embedded cluster is shut down on purpose

    # --- triggers ---------------------------------------------------------------------

    def on_signal(self, signum: int) -> None:
        self.signals += 1
        if self.signal is None:
            self.signal = signum
        self.stop.set()
        self.say(f"[multi-image] {self.stop_message}")
        if self.signals == 1:
            self._timer = threading.Timer(self.deadline_s, self._fire_for_signal)
            self._timer.daemon = True
            self._timer.start()
        else:
            threading.Thread(target=self._fire_for_signal, daemon=True).start()

    def _fire_for_signal(self) -> None:
        name = signal.Signals(self.signal).name if self.signal else "a signal"
        self.fire("IMG_021", f"the run was stopped by {name}", exit_status(self.signal))

    def _watch(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        silent_since = None
        while self._watching.is_set():
            try:
                with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                    silent_since = None
            except (OSError, ValueError):
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since >= self.lost_after_s and self._watching.is_set():
                    self.stop.set()
                    if self.signals:  # the signal took Ray's processes down with it: the signal is the cause
                        self._fire_for_signal()
                    self.fire("IMG_019", f"the Ray cluster at {address} stopped answering mid-run "
                                         f"(for {self.lost_after_s:g}s); what finished is kept", 1)
                    return
            time.sleep(PROBE_INTERVAL_S)

    def fire(self, code: str, message: str, status: int) -> None:
        """Write from the journal (unless the run already writes) and end the process."""
        with self._lock:
            if self._writer == "run":
                return  # the run's own report is being written; its exit follows
            self._writer = "guard"
        rescue, context = self._rescue, self._rescue_context
        if rescue is not None:
            try:
                context.run(rescue, code, message) if context is not None else rescue(code, message)
            except BaseException as exc:  # noqa: BLE001 - the exit below must happen whatever failed
                self.say(f"error IMG_020: could not write the partial report: {exc}")
        self.status = status
        self._wrote.set()
        self._end(status)


class SignalWatch:
    """Context manager: SIGINT/SIGTERM go to `guard.on_signal`, seen at once through the wakeup fd."""

    def __init__(self, guard: RunGuard):
        self.guard = guard
        self._previous: dict[int, object] = {}
        self._previous_fd: int | None = None
        self._pipe: tuple[int, int] | None = None

    def __enter__(self) -> "SignalWatch":
        if threading.current_thread() is not threading.main_thread():
            return self
        read, write = os.pipe()
        os.set_blocking(write, False)
        self._pipe = (read, write)
        for signum in STOP_SIGNALS:
            # a Python handler must exist for the C handler to report the signal; the work is the watcher's
            self._previous[signum] = signal.signal(signum, lambda *_: None)
        self._previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        threading.Thread(target=self._read, args=(read,), name="kamui-signal-watch", daemon=True).start()
        return self

    def _read(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data or 0 in data:  # 0: __exit__ asks the watcher to end
                os.close(fd)
                return
            for signum in data:
                if signum in STOP_SIGNALS:
                    self.guard.on_signal(signum)

    def __exit__(self, *exc_info) -> None:
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        read, write = self._pipe
        try:
            os.write(write, b"\0")
        except OSError:
            os.close(read)  # the watcher is not reading: nothing else will close it
        os.close(write)
        self._pipe = None
