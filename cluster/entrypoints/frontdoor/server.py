"""The front door's listening side: a UNIX socket of the cluster's owner, one thread per client, and
each client's request run through the same pipeline as the direct path, in this long-lived process
(already on the cluster, its imports made and the language identifier loaded once).

A run here reads its client's environment and working directory (cluster.env.overlay), so its
folder, report, history and $GITHUB_OUTPUT are the ones the direct path would have written. The
client's signals reach the run's guard as they would in the direct path (stop, then the partial
report after the deadline or a second signal); a client that goes away is a hang-up: its run
stops the same way, so it never holds the warm replicas for a reader that is gone.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import threading
import time
from pathlib import Path

from cluster import env
from cluster.engine.leases import WarmLeases
from cluster.entrypoints.batch import run_batch, summary_table
from cluster.entrypoints.frontdoor.protocol import VERSION, Wire, peer_uid, private_dir, refusal, socket_path
from cluster.entrypoints.inputs import BatchInputs, GenerateInputs, prepare_batch, prepare_generate
from cluster.entrypoints.summary import error_line, summary_event, summary_lines
from cluster.errors import ImageGenError, describe_exception
from cluster.observability.events import Events
from cluster.output.durability.guard import GuardWrote, RunGuard
from cluster.pipeline.context import RunContext
from cluster.pipeline.run import run_request
from cluster.planning.language import warm_up as warm_up_language

PATH = "front-door"
# A batch, as the direct `batch`, gets longer than one run to finish what it has after a signal
BATCH_DEADLINE_S = 9.0


class FrontDoor:
    def __init__(self, path: Path | None = None, gcs_address: str = ""):
        self.path = path or socket_path()
        self.gcs_address = gcs_address
        self.started = time.time()
        self.served = 0
        self._conversations: set[Conversation] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._closing = False
        self.leases = WarmLeases()  # the warm replicas' handles, shared by every client's run

    def start(self) -> FrontDoor:
        problem = private_dir(self.path.parent, create=True)
        if problem:
            raise ImageGenError("IMG_019", f"the front door cannot listen: {problem}")
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)  # an earlier front door's, left by a cluster that was killed
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        os.chmod(self.path, 0o600)  # the folder (0700) already keeps others out; this says so twice
        listener.listen(64)
        self._listener = listener
        warm_up_language()
        threading.Thread(target=self._accept, name="kamui-front-door", daemon=True).start()
        return self

    def describe(self) -> dict:
        with self._lock:
            running = len(self._conversations)
        return {"socket": str(self.path), "pid": os.getpid(), "gcs_address": self.gcs_address,
                "running": running, "served": self.served, "up_seconds": round(time.time() - self.started, 1),
                "leased": self.leases.keys()}

    def close(self, timeout_s: float = 20.0) -> int:
        """No new clients; runs in progress stop as on SIGTERM and get `timeout_s` to write. Returns
        how many were still running then."""
        self._closing = True
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass
        with self._lock:
            conversations = list(self._conversations)
        for conversation in conversations:
            conversation.guard.on_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self._conversations and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(self._conversations)

    def _accept(self) -> None:
        while not self._closing:
            listener = self._listener
            if listener is None:
                return
            try:
                connection, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(connection,), name="kamui-front-door-client",
                             daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        wire = Wire(connection)
        try:
            refused = refusal(peer_uid(connection))
            if refused:
                wire.send({"type": "refused", "message": refused})
                return
            hello = wire.receive()
            if not hello or hello.get("op") != "hello":
                return
            if self._closing:
                wire.send({"type": "refused", "message": "the front door is closing"})
                return
            wire.send({"type": "ready", "version": VERSION, "gcs_address": self.gcs_address, "pid": os.getpid()})
            request = wire.receive()
            if request is None:
                return  # the client went its own way before asking
            conversation = Conversation(wire, request, self.leases)
            with self._lock:
                self._conversations.add(conversation)
                self.served += 1
            try:
                conversation.run()
            finally:
                with self._lock:
                    self._conversations.discard(conversation)
        except Exception as exc:  # noqa: BLE001 - one client's trouble never stops the front door
            wire.send({"type": "error", "code": "IMG_020", "message": f"unexpected failure in the front door: "
                                                                     f"{describe_exception(exc)}", "exit_status": 1})
        finally:
            wire.close()


class Conversation:
    """One client's request: its run, its guard, and what goes back to the client."""

    def __init__(self, wire: Wire, request: dict, leases: WarmLeases | None = None):
        self.wire = wire
        self.leases = leases
        self.request = request
        self.op = request.get("op")
        deadline = BATCH_DEADLINE_S if self.op == "batch" else None
        self.guard = RunGuard(**({"deadline_s": deadline} if deadline else {}), say=self._say, end=self._guard_ended)
        self._finished = threading.Lock()
        self._done = False
        self._hung_up = False

    def run(self) -> None:
        threading.Thread(target=self._listen, name="kamui-front-door-listen", daemon=True).start()
        environment = {k: v for k, v in (self.request.get("environment") or {}).items() if k in env.RUN_VARIABLES}
        cwd = Path((self.request.get("inputs") or {}).get("cwd") or "/")
        try:
            with env.overlay({name: environment.get(name) for name in env.RUN_VARIABLES}, cwd=cwd):
                if self.op == "generate":
                    self._generate(GenerateInputs.from_message(self.request["inputs"]))
                elif self.op == "batch":
                    self._batch(BatchInputs.from_message(self.request["inputs"]))
                else:
                    raise ImageGenError("IMG_011", f"the front door does not know {self.op!r}")
        except GuardWrote:
            pass  # the guard wrote the report and told the client
        except ImageGenError as exc:
            self._finish({"type": "error", "code": exc.code, "message": exc.message, "exit_status": exc.exit_status})
        except (TypeError, KeyError) as exc:  # a client of another version
            self._finish({"type": "error", "code": "IMG_011", "message": f"the front door could not read the "
                                                                        f"request ({describe_exception(exc)})", "exit_status": 2})
        finally:
            self.guard.release()

    def _generate(self, inputs: GenerateInputs) -> None:
        request, registry, limits, history = prepare_generate(inputs)
        context = RunContext(registry, limits, events=Events(self._forward), stop=self.guard.stop, history=history,
                             guard=self.guard, resident=True, path=PATH, leases=self.leases)
        result = run_request(request, context)
        self._finish({"type": "done", "exit_code": 143 if self.guard.signal == signal.SIGTERM else result.exit_code,
                      "summary": summary_event(result, PATH), "lines": summary_lines(result),
                      "error": error_line(result)})

    def _batch(self, inputs: BatchInputs) -> None:
        batch = prepare_batch(inputs)
        results = run_batch(batch.entries, batch.registry, batch.limits, events=Events(self._forward),
                            stop=self.guard.stop, entries_at_once=batch.at_once, budget_usd=batch.budget,
                            history=batch.history)
        if self.guard.stop.is_set():
            code = 143 if self.guard.signal == signal.SIGTERM else 130
        else:
            code = 0 if all(r.ok for r in results) else 1
        self._finish({"type": "done", "exit_code": code, "batch_summary": [r.__dict__ for r in results],
                      "table": summary_table(results)})

    # --- to and from the client ----------------------------------------------------------

    def _listen(self) -> None:
        """The client's signals, and its going away (a hang-up: the run stops as for a signal)."""
        while True:
            message = self.wire.receive()
            if message is None:
                self._hang_up()
                return
            if message.get("op") == "signal" and message.get("signal") in (signal.SIGINT, signal.SIGTERM):
                self.guard.on_signal(int(message["signal"]))

    def _hang_up(self) -> None:
        with self._finished:
            if self._done or self._hung_up:
                return
            self._hung_up = True
        self.guard.on_signal(signal.SIGHUP)

    def _forward(self, event: dict) -> None:
        if not self.wire.send({"type": "event", "event": event}):
            self._hang_up()

    def _say(self, line: str) -> None:
        self.wire.send({"type": "say", "line": line})

    def _guard_ended(self, status: int) -> None:
        """The guard wrote the partial report (a second signal, the deadline): the client exits with this."""
        self._finish({"type": "done", "exit_code": status})

    def _finish(self, message: dict) -> None:
        with self._finished:
            if self._done:
                return
            self._done = True
        self.wire.send(message)
