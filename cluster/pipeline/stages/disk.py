"""Disk: the plan's images fit the disk space the folder has and --disk-space-limit allows (IMG_005
naming both), checked before any cluster starts."""

from __future__ import annotations

from cluster.pipeline.state import RunState
from cluster.planning.limits import Limits
from cluster.planning.planner import Plan
from cluster.planning.preflight import check_disk_space, estimate_bytes
from cluster.planning.request import GenerationRequest


def disk(state: RunState) -> RunState:
    state.free_bytes = check_room(state.request, state.plan, state.context.limits)
    return state


def check_room(request: GenerationRequest, plan: Plan, limits: Limits) -> int | None:
    """The folder's free bytes when the plan's images fit; IMG_005 otherwise. The dry run calls this too."""
    return check_disk_space(request.folder_name, estimate_bytes([t.width * t.height for t in plan.tasks]),
                            limits.perf.disk_space_limit)
