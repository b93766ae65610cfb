"""One run, end to end, in one direction: a list of stages over one state (cluster.pipeline.stages).

request -> preflight -> select -> budget -> disk
        -> [Ray] translate -> budget -> memory -> resume -> generate -> score
        -> outcome -> price -> upload -> write -> publish -> files + step outputs

Errors found before generation (bad input, missing weights or credentials, no disk, over budget,
no node for a model) raise and write nothing. Errors during generation end in a written report
that says what happened; the exit status is 0 when at least one image was made.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cluster.engine.retry import ABORT_CODES
from cluster.observability.events import Events
from cluster.output.report import RunOutcome
from cluster.output.writer import WrittenRun
from cluster.pipeline.context import RunContext
from cluster.pipeline.session import on_cluster
from cluster.pipeline.stages.budget import budget
from cluster.pipeline.stages.disk import disk
from cluster.pipeline.stages.generate import generate
from cluster.pipeline.stages.memory import memory
from cluster.pipeline.stages.outcome import outcome
from cluster.pipeline.stages.preflight import preflight
from cluster.pipeline.stages.price import price
from cluster.pipeline.stages.publish import publish
from cluster.pipeline.stages.resume import resume
from cluster.pipeline.stages.score import score
from cluster.pipeline.stages.select import select
from cluster.pipeline.stages.translate import translate
from cluster.pipeline.stages.upload import upload
from cluster.pipeline.stages.write import write
from cluster.pipeline.state import RunState
from cluster.planning.limits import Limits
from cluster.planning.request import GenerationRequest
from models.registry import Registry

PLAN = (preflight, select, budget, disk)  # before any cluster starts
PLAN_ON_CLUSTER = (translate, budget, memory)  # refusals still: nothing is written
MAKE = (resume, generate, score)
FINISH = (outcome, price, upload, write, publish)


@dataclass
class RunResult:
    outcome: RunOutcome
    written: WrittenRun
    outputs: dict[str, str]
    events: Events = field(default_factory=Events)

    @property
    def exit_code(self) -> int:
        if self.outcome.stopped == "interrupted":
            return 130
        if not self.outcome.completed or self.aborted or self.upload_failed:
            return 1
        return 0

    @property
    def upload_failed(self) -> bool:
        """Downstream steps read the uploaded URLs; a run that could not provide them fails."""
        return self.outcome.error is not None and self.outcome.error.code == "IMG_022"

    @property
    def aborted(self) -> bool:
        """The run was stopped by an error the design card says fails the workflow (auth, disk)."""
        return self.outcome.error is not None and self.outcome.error.code in ABORT_CODES


def run_request(request: GenerationRequest, context: RunContext) -> RunResult:
    """One run of `request` in `context` (built once by the entry point)."""
    state = RunState.begin(request, context)
    for stage in PLAN:
        state = _timed(stage)(state)
    started, staged = time.perf_counter(), sum(state.stage_seconds.values())
    state = on_cluster(state, planning=[_timed(s) for s in PLAN_ON_CLUSTER], making=[_timed(s) for s in MAKE])
    # what the stages on the cluster did not take: starting or joining Ray, the guard, metrics, leaving
    state.stage_seconds["cluster"] = time.perf_counter() - started - (sum(state.stage_seconds.values()) - staged)
    for stage in FINISH:
        state = _timed(stage)(state)
    context.events.emit("stage_times", seconds={name: round(s, 4) for name, s in state.stage_seconds.items()})
    return RunResult(state.outcome, state.written, state.outputs, context.events)


def _timed(stage):
    """`stage`, adding the seconds it takes to the state's stage_seconds under its name."""
    def timed(state: RunState) -> RunState:
        started = time.perf_counter()
        try:
            return stage(state)
        finally:
            state.stage_seconds[stage.__name__] = state.stage_seconds.get(stage.__name__, 0.0) + \
                time.perf_counter() - started

    timed.__name__ = stage.__name__
    return timed


def run_generation(request: GenerationRequest, registry: Registry, limits: Limits, **context) -> RunResult:
    """One run with a context of its own (tests, benchmarks); `context`: RunContext's other fields."""
    return run_request(request, RunContext(registry, limits, **context))
