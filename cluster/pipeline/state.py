"""`RunState`: one run's state, which every stage takes and returns. The request and the context
never change; each stage fills in what it decided or made, in the order of cluster.pipeline.run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from cluster.engine.scheduler import ScheduleResult
from cluster.engine.scoring import Scorer
from cluster.errors import ImageGenError
from cluster.output.durability.journal import Resumed, RunJournal
from cluster.output.report import RunOutcome
from cluster.output.writer import WrittenRun
from cluster.pipeline.context import RunContext
from cluster.planning.costs.budget import BudgetTracker
from cluster.planning.planner import Plan
from cluster.planning.request import GenerationRequest
from cluster.quality.score import QualityScore
from cluster.work import GeneratedImage, ImageTask


@dataclass
class RunState:
    request: GenerationRequest
    context: RunContext
    started: float  # time.monotonic() at the start: the total timeout counts from here
    started_at: str  # the same moment, UTC, for the report
    # preflight: the journal and what an interrupted run of the same request left
    journal: RunJournal | None = None
    journal_key: str = ""
    resumed: Resumed | None = None
    # planning: the plan, refined by each planning stage
    plan: Plan | None = None
    translation: dict | None = None  # the prompt's language and its English (None: it is English)
    tracker: BudgetTracker | None = None  # --budget-usd: what the scheduler holds spending with
    budget_note: dict | None = None  # the budget's degradation of the plan, for the report
    priced: dict[str, int] | None = None  # the images per model the budget last priced
    free_bytes: int | None = None  # free disk before the run
    kept: list[GeneratedImage] = field(default_factory=list)  # made by the interrupted run, kept
    todo: list[ImageTask] = field(default_factory=list)  # what this run makes
    # on the cluster
    cluster_info: dict = field(default_factory=dict)
    resident: bool = False
    scorer: Scorer | None = None  # the run's scorer
    own_scorer: Scorer | None = None  # the scorer the run made, until it is released
    schedule: ScheduleResult = field(default_factory=ScheduleResult)
    replicas: dict = field(default_factory=dict)
    scores: list[QualityScore] = field(default_factory=list)
    scorer_info: dict = field(default_factory=dict)
    scorer_failure: str = ""
    # the result
    error: ImageGenError | None = None
    outcome: RunOutcome | None = None
    written: WrittenRun | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    # seconds each stage took (a stage run twice, as budget, adds up), and `cluster`: joining or starting
    # Ray and leaving it; said in the stage_times event, which scripts/bench_latency.py reads
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def begin(cls, request: GenerationRequest, context: RunContext) -> RunState:
        return cls(request, context, time.monotonic(), datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def release_scorer(self) -> None:
        """Release the scorer the run made (a scorer from the context stays with its owner)."""
        scorer, self.own_scorer = self.own_scorer, None
        if scorer is not None:
            scorer.release()
