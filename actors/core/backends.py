"""Pick the generator class for a model spec. Every backend answers the same
`generate(tasks, call_id, options) -> list[GeneratedImage | FailedImage]` (one entry per task, in
order; a FailedImage for a task the backend could not make, e.g. a filtered one), plus an
optional `cancel(call_id, code, reason)`."""

from __future__ import annotations

import importlib
from pathlib import Path

from models.registry import ModelSpec


def make_backend(spec: ModelSpec, cache_root: Path, replica: str, credentials=None,
                 gpu_reserve_gb: float | None = None, memory_plan=None):
    if spec.backend == "diffusers":
        from actors.core.diffusers_generator import DiffusersGenerator

        return DiffusersGenerator(spec, cache_root, replica, gpu_reserve_gb, memory_plan)
    if spec.backend == "imagen":
        from actors.core.google_generator import GoogleImageGenerator

        return GoogleImageGenerator(spec, replica, credentials)
    module_name, _, attr = (spec.factory or "").partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(spec, cache_root, replica)
