"""Preflight: the folder is the run's to write, staging folders a killed run left are cleaned, and
the journal of an interrupted run of the same request is found (or discarded with --no-resume)."""

from __future__ import annotations

import hashlib

from cluster.output.durability.journal import RunJournal, request_key
from cluster.pipeline.state import RunState
from cluster.planning.preflight import check_folder_owned, clean_stale_staging
from cluster.planning.request import GenerationRequest
from models.registry import Registry


def preflight(state: RunState) -> RunState:
    request = state.request
    check_folder_owned(request.folder_name)
    clean_stale_staging(request.folder_name)
    state.journal = RunJournal(request.folder_name)
    state.journal_key = request_key(journal_key_fields(request, state.context.registry))
    if request.no_resume:
        state.journal.discard()
    state.resumed = None if request.no_resume else state.journal.load(state.journal_key)
    return state


def journal_key_fields(request: GenerationRequest, registry: Registry) -> dict:
    """What decides a run's images: a rerun with the same resumes, anything else starts clean."""
    try:
        config = hashlib.sha256(registry.path.read_bytes()).hexdigest()
    except OSError:
        config = str(registry.path)
    return {"prompt": request.image_prompt, "models": request.models_input, "count": request.image_count,
            "strategy": request.generation_strategy, "comparison": request.enable_comparison, "seed": request.seed,
            "size": [request.width, request.height], "steps": request.steps, "memory_plan": request.memory_plan,
            "budget": [request.budget_usd, request.budget_policy], "translate": request.translate, "config": config}
