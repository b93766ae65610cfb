"""Calls queued at one local replica share its pipeline: while a call runs, the calls that arrive
and could share a pipeline call with each other (same size, steps, guidance) wait together, and
the next pipeline call takes as many of them as the replica's batch holds. Several runs, batch
entries or API requests asking one warm replica for images at once so get more images per second
than one after another. No Ray here.

A dedicated thread runs the pipeline; the callers only wait for their own results, so a caller
whose call is cancelled (its run timed out or was stopped) gets its answer at once, while the
others in its batch keep theirs.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from cluster.errors import ImageGenError
from cluster.work import CallOptions, ImageTask


@dataclass(eq=False)
class Ticket:
    tasks: list[ImageTask]
    call_id: str
    options: CallOptions | None
    done: threading.Event = field(default_factory=threading.Event)
    result: list | None = None
    error: BaseException | None = None

    def finish(self, result: list | None = None, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()

    @property
    def shape(self) -> tuple:
        first = self.tasks[0]
        return first.width, first.height, first.steps, first.guidance


class Coalescer:
    def __init__(self, run: Callable[[list[ImageTask], str, CallOptions | None], list],
                 cancel: Callable[[str, str, str], None] | None, max_images: int):
        """`run(tasks, call_id, options)`: one pipeline call (the backend's generate); `cancel(call_id,
        code, reason)`: stop a running one; `max_images`: the replica's batch."""
        self._run = run
        self._cancel = cancel
        self.max_images = max(1, max_images)
        self._cv = threading.Condition()
        self._pending: list[Ticket] = []
        self._running: list[Ticket] = []
        self._running_id: str | None = None
        self._thread: threading.Thread | None = None
        self.merged_calls = 0  # pipeline calls that served more than one caller

    def submit(self, tasks: list[ImageTask], call_id: str, options: CallOptions | None) -> list:
        ticket = Ticket(list(tasks), call_id, options)
        with self._cv:
            self._pending.append(ticket)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="kamui-pipeline", daemon=True)
                self._thread.start()
            self._cv.notify_all()
        ticket.done.wait()
        if ticket.error is not None:
            raise ticket.error
        return ticket.result

    def cancel(self, call_id: str, code: str, reason: str) -> None:
        with self._cv:
            for ticket in self._pending:
                if ticket.call_id == call_id:
                    self._pending.remove(ticket)
                    ticket.finish(error=ImageGenError(code, f"{reason} (before it started)"))
                    return
            members = [t for t in self._running if t.call_id == call_id]
            if not members:
                return
            if len(self._running) == 1 and self._cancel is not None:
                self._cancel(self._running_id, code, reason)  # its own pipeline call: stop the computation
            else:  # shared with others: this caller is answered now, the others keep their images
                members[0].finish(error=ImageGenError(code, reason))

    def _take(self) -> list[Ticket]:
        first = self._pending.pop(0)
        group, images = [first], len(first.tasks)
        for ticket in list(self._pending):
            if ticket.shape == first.shape and images + len(ticket.tasks) <= self.max_images:
                self._pending.remove(ticket)
                group.append(ticket)
                images += len(ticket.tasks)
        return group

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending:
                    if not self._cv.wait(timeout=30):
                        self._thread = None  # idle: the next submit starts a new one
                        return
                group = self._take()
                self._running = group
                self._running_id = group[0].call_id if len(group) == 1 else f"merged-{uuid.uuid4().hex[:8]}"
            try:
                tasks = [task for ticket in group for task in ticket.tasks]
                results = self._run(tasks, self._running_id, _merged_options(group))
                if len(group) > 1:
                    self.merged_calls += 1
                start = 0
                for ticket in group:
                    ticket.finish(result=results[start:start + len(ticket.tasks)])
                    start += len(ticket.tasks)
            except BaseException as exc:  # noqa: BLE001 - every caller of the call gets its failure
                for ticket in group:
                    ticket.finish(error=exc)
            finally:
                with self._cv:
                    self._running, self._running_id = [], None


def _merged_options(group: list[Ticket]) -> CallOptions | None:
    """The pipeline call runs until its last caller's budget; each caller's own deadline is still
    kept by its scheduler, which cancels just that caller."""
    budgets = [t.options.budget_s if t.options is not None else None for t in group]
    if any(b is None for b in budgets):
        return None
    return CallOptions(budget_s=max(budgets))
