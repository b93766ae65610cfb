"""The run's event loop: tasks in, generation calls out, within every limit.

Invariants, each tested:
- at most `max_parallel` generation calls are in flight across the run (a call may
  carry a batch of images for one model);
- per model, at most `concurrent_limit` calls in flight and `requests_per_minute`
  call starts per rolling minute;
- a call past `timeout_per_image` is cancelled (IMG_003) and the run goes on; a call
  that ignores the cancel for `cancel_grace` seconds gets its replica restarted;
- at `total_workflow_timeout` (or on a stop request) nothing new starts, what runs is
  cancelled, and the run ends with what it has.

Queue strategies (appendix B): models take free call slots in turn (round robin across
models, so none starves). Inside a model, `priority_based` sends retries and lower image
indices first, `round_robin` rotates over its replicas, `load_balanced` sends to the
replica with the least busy time so far. Ray patterns: submit, then
`ray.wait(num_returns=1)` and handle each result as it finishes.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cluster.planning.costs.budget import BudgetTracker
from cluster.planning.costs.money import format_usd
from cluster.errors import ImageGenError, as_image_error, describe_exception
from cluster.observability.events import Events
from cluster.planning.limits import Limits
from cluster.engine.rate_limit import ModelGate
from cluster.engine.replicas import ModelGroup, Replica, ReplicaPool
from cluster.engine.retry import Decision, RetryPolicy, TaskState
from cluster.planning.strategies import StaticSource, SequentialSource
from cluster.work import Attempt, CallOptions, FailedImage, GeneratedImage, ImageTask
from models.registry import ModelSpec

# How often the loop wakes without results, to check deadlines and rate windows.
TICK_SECONDS = 0.5
# Seconds an interrupted run waits for cancelled calls before giving up on them.
INTERRUPT_GRACE = 3.0
# A remote request's timeout halves after each network error, at most this many times.
MAX_TIMEOUT_HALVINGS = 3


@dataclass
class Call:
    call_id: str
    model: str
    replica: Replica
    states: list[TaskState]
    started: float
    deadline: float
    ref: Any
    cancel_code: str | None = None
    cancel_reason: str = ""
    cancelled_at: float | None = None
    killed_at: float | None = None


@dataclass
class ScheduleResult:
    images: list[GeneratedImage] = field(default_factory=list)
    failures: list[FailedImage] = field(default_factory=list)
    degradations: list[dict] = field(default_factory=list)
    aborted: ImageGenError | None = None
    stopped: str | None = None  # "total_timeout" | "interrupted"
    calls: int = 0
    max_in_flight: int = 0


@dataclass
class SchedulerOptions:
    """What a run gives its scheduler besides the work and its limits; every field may be left out."""

    events: Events = field(default_factory=Events)
    stop: threading.Event = field(default_factory=threading.Event)  # set: nothing new starts
    planned: dict[str, int] = field(default_factory=dict)  # images each model is to make (replica counts)
    budget: BudgetTracker | None = None  # --budget-usd: calls that would cross it do not start
    # an image's score as it arrives (the sequential strategy steers its prompts by it)
    score: Callable[[GeneratedImage], float | None] | None = None
    # the task for an image moving to another model (its prompt, size and steps there)
    resolve_fallback: Callable[[ImageTask, str], ImageTask] | None = None
    # called once, when the first tasks' models hold their placement groups (the run starts its
    # scorer then, so the scorer never takes a card before them)
    after_placement: Callable[[], None] | None = None
    on_image: Callable[[GeneratedImage], None] | None = None  # each finished image (the run journals it)
    clock: Callable[[], float] = time.monotonic


class Scheduler:
    def __init__(self, pool: ReplicaPool, specs: dict[str, ModelSpec], limits: Limits, max_parallel: int,
                 retry: RetryPolicy, options: SchedulerOptions | None = None):
        options = options or SchedulerOptions()
        self.pool = pool
        self.specs = specs
        self.limits = limits
        self.max_parallel = max_parallel
        self.retry = retry
        self.events = options.events
        self.score = options.score
        self.resolve_fallback = options.resolve_fallback
        self.stop = options.stop
        self.clock = options.clock
        self.gates: dict[str, ModelGate] = {}
        self.queues: dict[str, list[TaskState]] = {}
        self.calls: dict[Any, Call] = {}
        self.result = ScheduleResult()
        self._model_turn = 0
        self._replica_turn: dict[str, int] = {}
        self._fallback_noted: set[tuple[str, str]] = set()
        self._halt_code = ("IMG_003", "not started")
        self._calls_planned: dict[str, int] = {}
        self._reduced = False
        self._done: set[int] = set()
        self._calls_started: dict[str, int] = {}
        self._source: StaticSource | SequentialSource | None = None
        self.planned = dict(options.planned)
        self._after_placement = options.after_placement
        self._on_image = options.on_image
        self.budget = options.budget

    # --- entry point ----------------------------------------------------------------

    def run(self, source: StaticSource | SequentialSource, started: float | None = None,
            done: list[GeneratedImage] | None = None) -> ScheduleResult:
        """Run every task `source` gives; `started` is when the run began (the total limit counts from
        there); `done`: images an earlier run of the same request finished (a resumed run)."""
        for image in done or []:
            self.result.images.append(image)
            self._done.add(image.task.index)
        self._source = source
        self.pool.expect([self.specs[m] for m in self.planned if m in self.specs], self.planned)
        started = self.clock() if started is None else started
        total = self.limits.perf.total_workflow_timeout
        run_deadline = started + total
        reduce_at = started + total * self.limits.scheduler.reduce_count_at
        while True:
            now = self.clock()
            if not self._halted():
                if self.stop.is_set():
                    self._halt("interrupted", "IMG_021", "the run was interrupted", now)
                elif now >= run_deadline:
                    self._halt("total_timeout", "IMG_003", f"total_workflow_timeout of {total:g}s reached", now)
                elif now >= reduce_at and not self._reduced:
                    self._reduce_image_count(total)
            if not self._halted():
                if not self._reduced or (not self.result.images and not self.calls and not self._queued()):
                    for task in source.take():
                        self._enqueue(TaskState(task))
                    if self._after_placement is not None:
                        after, self._after_placement = self._after_placement, None
                        after()
                self._fail_unservable()
                self._dispatch(now)
            self._enforce_deadlines(now)
            self.pool.expire_loads(now)
            if not self.calls and (self._halted() or (not self._queued() and source.exhausted())):
                break
            self._wait(self.pool.loading_refs(), now, run_deadline)
        self._drain_queues_as_failed()
        return self.result

    def _halted(self) -> bool:
        return self.result.stopped is not None or self.result.aborted is not None

    def _reduce_image_count(self, total: float) -> None:
        """The design card's "Reduce Image Count": close to the total limit, images not yet started
        are dropped, keeping one when nothing has been made and nothing is running."""
        self._reduced = True
        waiting = sorted((s for q in self.queues.values() for s in q), key=lambda s: s.task.index)
        keep = waiting[:1] if not self.result.images and not self.calls else []
        dropped = [s for s in waiting if s not in keep]
        if not dropped:
            return
        for queue in self.queues.values():
            queue[:] = [s for s in queue if s in keep]
        reason = (f"dropped: {self.limits.scheduler.reduce_count_at:.0%} of total_workflow_timeout "
                  f"({total:g}s) passed with images still waiting")
        for state in dropped:
            self._fail(state, "IMG_003", reason)
        self.result.degradations.append({
            "strategy": "reduce_image_count", "trigger": "timeout_exceeded", "reason": reason,
            "images_dropped": len(dropped), "images_made": len(self.result.images),
        })
        self.events.emit("degraded", strategy="reduce_image_count", dropped=len(dropped))

    # --- queueing and dispatch ------------------------------------------------------

    def _enqueue(self, state: TaskState) -> None:
        model = state.task.model
        if model not in self.queues:
            self.queues[model] = []
            self.gates[model] = ModelGate(self.specs[model].rate_limit, self.limits.scheduler.rate_window_seconds)
            self.pool.ensure(self.specs[model], self.planned.get(model, 1), state.task.width, state.task.height)
        self.queues[model].append(state)

    def _queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def _dispatch(self, now: float) -> None:
        while len(self.calls) < self.max_parallel:
            models = [m for m, q in self.queues.items() if q]
            for offset in range(len(models)):
                model = models[(self._model_turn + offset) % len(models)]
                if self._start_one(model, now):
                    self._model_turn = self._model_turn + offset + 1
                    break
            else:
                return

    def _start_one(self, model: str, now: float) -> bool:
        group = self.pool.groups.get(model)
        gate = self.gates[model]
        if group is None or not group.usable or not gate.can_start(now):
            return False
        ready_states = [s for s in self.queues[model] if s.not_before <= now]
        if not ready_states:
            return False
        replica = self._pick_replica(group)
        if replica is None:
            return False
        batch = self._take_batch(group, ready_states)
        if self.budget is not None:
            batch = self._within_budget(model, batch)
            if not batch:
                return True  # its images were refused: the queue changed
        call_id = uuid.uuid4().hex[:12]
        tasks = [s.task for s in batch]
        budget = self.limits.perf.timeout_per_image
        shrink = 2 ** min(MAX_TIMEOUT_HALVINGS, max(s.network_failures for s in batch))
        options = CallOptions(budget_s=budget, request_timeout_s=group.spec.request_timeout_s / shrink)
        ref = replica.actor.generate.remote(tasks, call_id, options)
        if self.budget is not None:
            self.budget.start(model, len(tasks))
        replica.in_flight += 1
        gate.started(now)
        # A resident replica may be busy with another run's call first; it holds the exact budget
        # itself (from when the call gets the pipeline), so the driver's deadline is a backstop.
        allowance = budget * (2 if replica.resident else 1)
        call = Call(call_id, model, replica, batch, now, now + allowance, ref)
        self.calls[ref] = call
        self.result.calls += 1
        self.result.max_in_flight = max(self.result.max_in_flight, len(self.calls))
        self.events.emit("call_started", model=model, replica=replica.name, images=len(tasks),
                         indices=[t.index for t in tasks], in_flight=len(self.calls), queued=self._queued())
        return True

    def _within_budget(self, model: str, batch: list[TaskState]) -> list[TaskState]:
        """The part of `batch` the budget still pays for; the rest fails with IMG_029, said once."""
        affordable = self.budget.affordable(model, len(batch))
        if affordable == len(batch):
            return batch
        reason = (f"not started: it would cross --budget-usd {format_usd(self.budget.budget)} (about "
                  f"{format_usd(self.budget.spent + self.budget.reserved)} spent or running, {format_usd(self.budget.price(model))} "
                  f"per image of {model})")
        for state in batch[affordable:]:
            self._fail(state, "IMG_029", reason)
        if not any(d.get("strategy") == "budget_stop" for d in self.result.degradations):
            self.result.degradations.append({"strategy": "budget_stop", "trigger": "spending reached --budget-usd",
                                             "budget_usd": self.budget.budget, "code": "IMG_029"})
            self.events.emit("budget_reached", model=model, budget_usd=self.budget.budget)
        return batch[:affordable]

    def _pick_replica(self, group: ModelGroup) -> Replica | None:
        ready = group.ready
        if not ready:
            return None
        strategy = group.spec.rate_limit.queue_strategy
        if strategy == "round_robin":
            turn = self._replica_turn.get(group.spec.id, 0)
            names = [r.name for r in group.replicas]
            ordered = sorted(ready, key=lambda r: (names.index(r.name) - turn) % len(names))
            self._replica_turn[group.spec.id] = (names.index(ordered[0].name) + 1) % len(names)
            return ordered[0]
        # load_balanced and priority_based: least loaded replica first
        return min(ready, key=lambda r: (r.in_flight, r.busy_seconds, r.calls))

    def _take_batch(self, group: ModelGroup, ready_states: list[TaskState]) -> list[TaskState]:
        """A batch of tasks that can share one call, sized so the model's replicas share the work."""
        if group.spec.rate_limit.queue_strategy == "priority_based":
            ready_states = sorted(ready_states, key=lambda s: (s.priority, s.task.index))
        head = ready_states[0]
        if head.solo:
            compatible = [head]
        else:
            compatible = [s for s in ready_states if not s.solo and _same_call(s.task, head.task, group.spec)]
        # Local models: split the images evenly over the calls planned for the model's replicas
        # (10 images, 3 replicas, batches of 4 -> 4, 3, 3), whatever order the replicas come up in.
        # Remote models: as few requests as the batch size allows, since quotas count requests.
        model = group.spec.id
        if model not in self._calls_planned:
            planned = max(1, self.planned.get(model, len(compatible)))
            calls = math.ceil(planned / group.batch_size)
            if group.spec.is_local:
                slots = min(sum(r.concurrency for r in group.replicas if not r.dead) or 1, self.max_parallel)
                calls = max(calls, min(slots, planned))
            self._calls_planned[model] = calls
        remaining_calls = max(1, self._calls_planned[model] - self._calls_started.get(model, 0))
        size = min(group.batch_size, max(1, math.ceil(len(compatible) / remaining_calls)))
        self._calls_started[model] = self._calls_started.get(model, 0) + 1
        batch = compatible[:size]
        queue = self.queues[group.spec.id]
        for state in batch:
            queue.remove(state)
        return batch

    # --- waiting and results -------------------------------------------------------

    def _wait(self, loads: dict, now: float, run_deadline: float) -> None:
        import ray

        refs = list(self.calls) + list(loads)
        timeout = self._next_wakeup(now, run_deadline)
        if not refs:
            time.sleep(timeout)
            return
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        for ref in ready:
            if ref in self.calls:
                self._finish(self.calls.pop(ref))
            elif ref in loads:
                self.pool.on_loaded(loads[ref])
        # pick up anything else already finished without blocking again
        if ready:
            more, _ = ray.wait([r for r in refs if r not in ready], num_returns=len(refs) - len(ready), timeout=0)
            for ref in more:
                if ref in self.calls:
                    self._finish(self.calls.pop(ref))
                elif ref in loads:
                    self.pool.on_loaded(loads[ref])

    def _next_wakeup(self, now: float, run_deadline: float) -> float:
        moments = [run_deadline]
        for call in self.calls.values():
            if call.cancelled_at is None:
                moments.append(call.deadline)
            else:
                moments.append((call.killed_at or call.cancelled_at) + self._grace())
        for model, queue in self.queues.items():
            for state in queue:
                if state.not_before > now:
                    moments.append(state.not_before)
            opening = self.gates[model].next_window_opening(now) if queue else None
            if opening:
                moments.append(opening)
        return max(0.01, min(TICK_SECONDS, min(moments) - now))

    def _finish(self, call: Call) -> None:
        import ray

        source = self._source
        now = self.clock()
        elapsed = now - call.started
        call.replica.in_flight = max(0, call.replica.in_flight - 1)
        call.replica.busy_seconds += elapsed
        call.replica.calls += 1
        self.gates[call.model].finished()
        self.events.emit("call_finished", model=call.model, replica=call.replica.name, seconds=round(elapsed, 3),
                         in_flight=len(self.calls), queued=self._queued())
        try:
            results: list[GeneratedImage | FailedImage] = ray.get(call.ref)
        except Exception as exc:  # noqa: BLE001 - every failure is classified below
            if self.budget is not None:
                self.budget.finish(call.model, len(call.states), 0)
            self._call_failed(call, exc, elapsed)
            return
        if self.budget is not None:
            self.budget.finish(call.model, len(call.states), sum(isinstance(r, GeneratedImage) for r in results))
        for state, image in zip(call.states, results):
            if isinstance(image, FailedImage):  # this task failed inside an otherwise good call
                state.attempts.append(Attempt(call.model, call.replica.name, round(elapsed, 3), image.code, image.message))
                self.events.emit("call_failed", model=call.model, replica=call.replica.name, code=image.code,
                                 message=image.message, indices=[state.task.index])
                self._after_failure(state, image.code, image.message)
                continue
            if state.task.index in self._done:  # never two files for one image
                self.events.emit("duplicate_dropped", index=state.task.index, model=call.model)
                continue
            self._done.add(state.task.index)
            image.attempts = state.attempts + [Attempt(call.model, call.replica.name, round(elapsed, 3))]
            self.result.images.append(image)
            if self._on_image is not None:
                try:
                    self._on_image(image)
                except OSError as exc:  # a journal that cannot be written must not stop the run
                    self.events.emit("journal_failed", index=image.task.index, message=str(exc))
            score = self.score(image) if (self.score and source.wants_scores) else None
            source.on_result(image, score)
            self.events.emit("image_done", index=image.task.index, model=call.model, replica=call.replica.name,
                             seconds=round(image.seconds, 3), done=len(self.result.images))

    def _call_failed(self, call: Call, exc: Exception, elapsed: float) -> None:
        from ray.exceptions import RayActorError

        error = as_image_error(exc)
        died = False
        if call.cancel_code is not None:
            code, message = call.cancel_code, call.cancel_reason
        elif error is not None:
            code, message = error.code, error.message
        elif isinstance(exc, RayActorError):
            code, message = "IMG_020", f"replica {call.replica.name} died: {describe_exception(exc)}"
            died = True
            self.pool.on_died(call.replica)
        else:
            code, message = "IMG_020", f"{call.model} failed: {describe_exception(exc)}"
        if code == "IMG_002":
            # the model itself is gone (e.g. a remote model retired): send all its work elsewhere
            group = self.pool.groups.get(call.model)
            if group is not None and group.error is None:
                group.error = ImageGenError(code, message)
        self.events.emit("call_failed", model=call.model, replica=call.replica.name, code=code, message=message,
                         indices=[s.task.index for s in call.states])
        for state in call.states:
            state.attempts.append(Attempt(call.model, call.replica.name, round(elapsed, 3), code, message))
            self._after_failure(state, code, message, died)

    def _after_failure(self, state: TaskState, code: str, message: str, replica_died: bool = False) -> None:
        if self._halted():
            self._fail(state, code, message)
            return
        decision: Decision = self.retry.decide(state, code, self._usable, replica_died)
        if decision.action == "abort":
            self.result.aborted = ImageGenError(code, message)
            self._fail(state, code, message)
            self._halt(None, code, f"run stopped: {message}", self.clock())
            return
        if decision.action == "fail" or decision.model is None:
            self._fail(state, code, message)
            return
        if decision.action == "fallback":
            new_task = self.resolve_fallback(state.task, decision.model) if self.resolve_fallback else state.task
            key = (state.task.model, decision.model)
            if key not in self._fallback_noted:
                self._fallback_noted.add(key)
                self.result.degradations.append({
                    "strategy": "fallback_model", "trigger": code, "from_model": state.task.model,
                    "to_model": decision.model, "reason": message,
                })
                self.events.emit("fallback", from_model=state.task.model, to_model=decision.model, code=code)
            self.events.emit("image_moved", index=state.task.index, from_model=state.task.model,
                             to_model=decision.model)
            state.task = new_task
        state.not_before = self.clock() + decision.delay
        state.priority = -len(state.attempts)
        self._enqueue(state)

    def _fail(self, state: TaskState, code: str, message: str) -> None:
        self.result.failures.append(FailedImage(state.task, code, message, list(state.attempts)))
        if self._source is not None:
            self._source.on_failure(state.task)
        self.events.emit("image_failed", index=state.task.index, model=state.task.model, code=code, message=message)

    def _usable(self, model: str) -> bool:
        if model not in self.specs:
            return False
        group = self.pool.groups.get(model)
        return group is None or group.usable

    # --- deadlines, halting ---------------------------------------------------------

    def _grace(self) -> float:
        # an interrupted run is waited for briefly: the user is waiting for the prompt back
        grace = self.limits.scheduler.cancel_grace
        return min(grace, INTERRUPT_GRACE) if self.result.stopped == "interrupted" else grace

    def _enforce_deadlines(self, now: float) -> None:
        grace = self._grace()
        for ref, call in list(self.calls.items()):
            if call.cancelled_at is None:
                if now >= call.deadline:
                    self._cancel(call, "IMG_003",
                                 f"generation exceeded timeout_per_image ({self.limits.perf.timeout_per_image:g}s)", now)
            elif call.killed_at is None and now >= call.cancelled_at + grace:
                # the call ignored the cancel (stuck in a kernel or a socket): restart its replica
                call.killed_at = now
                self.pool.restart(call.replica)
            elif call.killed_at is not None and now >= call.killed_at + grace:
                # not even the kill produced an answer: give up on this call
                del self.calls[ref]
                self._finish_abandoned(call, now)

    def _finish_abandoned(self, call: Call, now: float) -> None:
        call.replica.in_flight = max(0, call.replica.in_flight - 1)
        if self.budget is not None:
            self.budget.finish(call.model, len(call.states), 0)
        self.gates[call.model].finished()
        self._call_failed(call, RuntimeError("abandoned after cancel and restart"), now - call.started)

    def _cancel(self, call: Call, code: str, reason: str, now: float) -> None:
        call.cancel_code, call.cancel_reason, call.cancelled_at = code, reason, now
        try:
            call.replica.actor.cancel.remote(call.call_id, code, reason)
        except Exception:  # noqa: BLE001 - the replica may be dead already; the grace period covers it
            pass

    def _halt(self, why: str | None, code: str, reason: str, now: float) -> None:
        if why is not None:
            self.result.stopped = why
            if why == "total_timeout":
                self.result.degradations.append({
                    "strategy": "reduce_image_count", "trigger": "timeout_exceeded",
                    "reason": reason, "images_made": len(self.result.images),
                })
            self.events.emit("run_halted", why=why, reason=reason)
        for call in self.calls.values():
            if call.cancelled_at is None:
                self._cancel(call, code, reason, now)
        self._halt_code = (code, reason)

    def _drain_queues_as_failed(self) -> None:
        code, reason = self._halt_code
        for model, queue in self.queues.items():
            while queue:
                state = queue.pop(0)
                self.result.failures.append(FailedImage(state.task, code, f"not started: {reason}", list(state.attempts)))

    def _fail_unservable(self) -> None:
        """Queued tasks of a model that can never run (unplaceable, failed to load) move on now."""
        for model, queue in list(self.queues.items()):
            group = self.pool.groups.get(model)
            if group is None or group.error is None or not queue:
                continue
            states, queue[:] = list(queue), []
            for state in states:
                state.attempts.append(Attempt(model, "-", 0.0, group.error.code, group.error.message))
                self._after_failure(state, group.error.code, group.error.message)


def _same_call(a: ImageTask, b: ImageTask, spec: ModelSpec) -> bool:
    same = (a.width, a.height, a.steps, a.guidance, a.adapters_key) == (b.width, b.height, b.steps, b.guidance,
                                                                       b.adapters_key)
    if not spec.is_local:
        same = same and a.prompt == b.prompt  # one API request carries one prompt
    return same

