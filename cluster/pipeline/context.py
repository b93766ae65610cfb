"""`RunContext`: what every run of one entry point shares, built once by the CLI, the API or a
batch (the registry, limits, history, costs, upload and scoring configuration, events, the stop
signal, the guard), instead of a dozen keywords on every call. A run that needs another view of it
(its own events, its own stop) takes `context.for_run(...)`."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

from cluster.engine.leases import WarmLeases
from cluster.engine.scoring import Scorer
from cluster.observability.events import Events
from cluster.observability.history import History
from cluster.output.durability.guard import RunGuard
from cluster.output.uploader import UploadConfig, load_upload_config
from cluster.planning.costs.config import CostConfig, load_costs
from cluster.planning.limits import Limits
from models.registry import Registry
from models.scorers import ScoringConfig, load_scoring


@dataclass
class RunContext:
    registry: Registry
    limits: Limits
    events: Events = field(default_factory=Events)
    stop: threading.Event | None = None  # set by a signal, the API's drain or a client gone: nothing new starts
    history: History = field(default_factory=History)
    costs: CostConfig | None = None  # None: configs/costs.yaml, read when the run prices
    upload_config: UploadConfig | None = None  # None: configs/output.yaml
    scoring: ScoringConfig | None = None  # None: configs/scoring.yaml
    scorer: Scorer | None = None  # a scorer the caller owns and keeps (the run never releases it)
    # writes the partial report from the journal when a signal or a lost cluster leaves the run no time to
    guard: RunGuard | None = None
    # use the cluster's warm replicas and leave them running; None: when the run joins a cluster that
    # outlives it (an embedded instance ends with the run anyway)
    resident: bool | None = None
    # which way the request came: "direct" (the CLI as a Ray driver of its own), "front-door" (handed
    # to the warm cluster's long-lived process), "api"; said in run_started and the report
    path: str = "direct"
    # a long-lived process's leases on the warm replicas (the API's, the front door's): its runs skip the registry
    leases: WarmLeases | None = None
    # False: the folder is scratch its caller removes once answered (an API answer carried in its
    # body), so it is not fsynced; the journal still is
    durable_folder: bool = True

    def for_run(self, **changes) -> RunContext:
        return replace(self, **changes)

    def cost_config(self) -> CostConfig:
        return self.costs or load_costs()

    def scoring_config(self) -> ScoringConfig:
        return self.scoring or load_scoring()

    def upload_defaults(self) -> UploadConfig:
        return self.upload_config or load_upload_config()
