"""The front door's client: `generate` and `batch` hand their inputs to the warm cluster's front door
and print what comes back exactly as the direct path prints it (the same progress display or JSON
lines, the same summary, the same exit status). It imports no Ray, torch, diffusers or pydantic:
what a warm run costs here is Python's start, a socket and the printing.

The front door is used when its socket answers `hello` within ANSWER_S and the run asks for the
cluster running here (no --address, `auto`, or that cluster's own address); `--address local`, a
remote cluster, `--debug` (Ray's logs and tracebacks are the direct path's) and `--dry-run` run
directly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from typing import TextIO

from cluster import env
from cluster.entrypoints.frontdoor.protocol import ANSWER_S, VERSION, Wire, private_dir, socket_path
from cluster.observability.progress import choose_sinks

# After the client's first signal, how long the front door has to finish (its guard writes the
# partial report by 6 s) before the client stops waiting: within the 10 s a stopped run is due.
STOP_WAIT_S = 9.0
LOST = ("error IMG_019: the warm cluster's front door closed the connection mid-run; the images made so "
        "far are journaled: run the same command again to resume")


class Door:
    """An open conversation with the front door, `ready` received."""

    def __init__(self, wire: Wire, ready: dict):
        self.wire = wire
        self.ready = ready
        self.signals: list[int] = []

    def generate(self, inputs, json_mode: bool) -> int:
        done = self._converse("generate", inputs, json_mode)
        if done is None:
            return 1
        if done.get("type") == "error":
            return done["exit_status"]
        out = sys.stdout
        if "summary" in done:
            if json_mode:
                print(json.dumps(done["summary"], ensure_ascii=False), file=out, flush=True)
            else:
                for line in done["lines"]:
                    print(line, file=out)
        if done.get("error"):
            print(done["error"], file=sys.stderr)
        return done["exit_code"]

    def batch(self, inputs, json_mode: bool) -> int:
        done = self._converse("batch", inputs, json_mode)
        if done is None:
            return 1
        if done.get("type") == "error":
            return done["exit_status"]
        if "batch_summary" in done:
            if json_mode:
                print(json.dumps({"event": "batch_summary", "entries": done["batch_summary"]}), flush=True)
            else:
                print(done["table"])
        return done["exit_code"]

    def _converse(self, op: str, inputs, json_mode: bool) -> dict | None:
        """Send the request, show its events, and return the last message (None: the front door was lost)."""
        sinks = choose_sinks(json_mode, out=sys.stdout)
        self.wire.send({"op": op, "inputs": inputs.as_message(), "environment": env.for_run()})
        previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            while True:
                message = self.wire.receive()
                if message is None:
                    print(LOST, file=sys.stderr, flush=True)
                    return None
                kind = message.get("type")
                if kind == "event":
                    _show(sinks, message["event"])
                elif kind == "say":
                    print(message["line"], file=sys.stderr, flush=True)
                elif kind == "error":
                    from cluster.observability.progress import one_line

                    print(f"error {message['code']}: {one_line(message['message'])}", file=sys.stderr, flush=True)
                    return message
                elif kind == "done":
                    return message
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.wire.close()

    def _on_signal(self, signum: int, _frame) -> None:
        """Forwarded: the front door's guard stops the run as the direct path's would."""
        self.signals.append(signum)
        self.wire.send({"op": "signal", "signal": signum})
        if len(self.signals) == 1:
            timer = threading.Timer(STOP_WAIT_S, self._give_up, args=(signum,))
            timer.daemon = True
            timer.start()

    def _give_up(self, signum: int) -> None:
        print("error IMG_021: the front door did not finish the stopped run in time; it writes its report from the "
              "journal", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(128 + signum)


def _show(sinks: list, event: dict) -> None:
    for sink in list(sinks):
        try:
            sink(event)
        except Exception:  # noqa: BLE001 - a display problem never stops the run (as Events.emit)
            sinks.remove(sink)


def open_door(address: str | None, debug: bool = False) -> tuple[Door | None, str]:
    """The front door to hand this run to, or (None, why not; "" when there is simply none here)."""
    address = address or env.ray_address()
    if debug or address == "local":
        return None, ""
    path = socket_path()
    if not os.path.lexists(path):
        return None, ""
    problem = private_dir(path.parent, create=False)
    if problem:
        return None, f"the warm cluster's front door was not used: {problem}; ran directly"
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(ANSWER_S)
    wire = Wire(connection)
    try:
        connection.connect(str(path))
        wire.send({"op": "hello", "version": VERSION})
        ready = wire.receive()
    except OSError as exc:
        ready, why = None, exc.strerror or type(exc).__name__
    else:
        why = "no answer" if ready is None else ready.get("message", "")
    if ready is None or ready.get("type") != "ready" or ready.get("version") != VERSION:
        wire.close()
        return None, (f"the warm cluster's front door ({path}) did not answer within {ANSWER_S:g}s ({why}); ran "
                      "directly" if ready is None else f"the warm cluster's front door refused ({why}); ran directly")
    if address not in (None, "auto") and address != ready.get("gcs_address"):
        wire.close()
        return None, ""  # another cluster than the one of this machine
    connection.settimeout(None)
    return Door(wire, ready), ""


def say_skipped(note: str, stream: TextIO | None = None) -> None:
    print(f"[multi-image] {note}", file=stream or sys.stderr, flush=True)
