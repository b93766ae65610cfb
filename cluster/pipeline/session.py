"""The run on its Ray cluster: an embedded instance, or the cluster it joins. While it runs, the
cluster's notes are said, the guard watches an embedded cluster (a lost one still ends in a partial
report), and metrics go out through Ray; all of that ends before the cluster does.

A planning stage that needs the cluster (translation, memory plans) refuses a run by raising an
`ImageGenError`: nothing is written and the error goes to the caller. Any other `ImageGenError`
from here on (Ray would not start, the cluster was lost) is recorded: the run still writes what it
has, with that error in its report."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from cluster.engine.ray_runtime import RayRuntime
from cluster.errors import ImageGenError, describe_exception
from cluster.observability.events import Events
from cluster.observability.metrics import RayMetricsSink
from cluster.pipeline.state import RunState

Stage = Callable[[RunState], RunState]


class _Refused(Exception):
    def __init__(self, error: ImageGenError):
        super().__init__(error.code)
        self.error = error


def on_cluster(state: RunState, planning: Sequence[Stage], making: Sequence[Stage]) -> RunState:
    """`planning` then `making`, in order, on the run's cluster."""
    try:
        with RayRuntime(state.request.address, state.request.debug) as runtime, _watched(state, runtime):
            try:
                for stage in planning:
                    state = stage(state)
            except ImageGenError as exc:  # refused before anything was made or written
                raise _Refused(exc) from None
            for stage in making:
                state = stage(state)
    except _Refused as refused:
        raise refused.error from None
    except ImageGenError as exc:
        state.error = exc
    return state


@contextlib.contextmanager
def _watched(state: RunState, runtime: RayRuntime) -> Iterator[None]:
    request, context = state.request, state.context
    state.cluster_info = {**runtime.describe(), "path": context.path}
    for note in state.cluster_info.get("notes", []):
        context.events.emit("ray_note", message=note)
    if context.guard is not None and runtime.owned:
        context.guard.watch(_gcs_address())
    sink = _ray_metrics_sink(context.events)
    # a cluster that outlives the run keeps its models warm for the next
    state.resident = context.resident if context.resident is not None else (
        request.address not in (None, "local") or runtime.joined is not None)
    try:
        yield
    finally:
        state.release_scorer()
        if sink in context.events.sinks:
            context.events.sinks.remove(sink)
        if context.guard is not None:
            context.guard.unwatch()  # an embedded cluster going down now is the run's own doing


def _gcs_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def _ray_metrics_sink(events: Events):
    """Prometheus metrics through Ray, when the cluster exports them; a run never fails for them."""
    try:
        sink = RayMetricsSink()
    except Exception as exc:  # noqa: BLE001 - e.g. a Ray build without the metrics agent
        events.emit("metrics_unavailable", message=describe_exception(exc))
        return None
    events.sinks.append(sink)
    return sink
