"""Builders for tests that need results without running models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cluster.output.png import encode_png
from cluster.quality.score import weight_free_score
from cluster.output.report import FinalImage, RunOutcome
from cluster.planning.request import GenerationRequest
from cluster.work import Attempt, FailedImage, GeneratedImage, ImageTask
from cluster.output.writer import file_url


def synthetic_image(seed: int, size: int = 32) -> np.ndarray:
    """A smooth gradient with a square: image-like (not noise), different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 255 // size, y * 255 // size, np.full_like(x, rng.integers(0, 255))], -1)
    a, b = sorted(rng.integers(0, size, 2))
    base[a:b + 1, a:b + 1] = rng.integers(0, 255, 3)
    return base.astype(np.uint8)


def generated(index: int, model: str, seed: int, size: int = 32, prompt: str = "a red fox") -> GeneratedImage:
    task = ImageTask(index, model, prompt, seed, size, size, 2, 0.0)
    png = encode_png(Image.fromarray(synthetic_image(seed, size)), task)
    return GeneratedImage(task, png, 0.5 + index * 0.1, f"{model}-0", size, size, "random",
                          attempts=[Attempt(model, f"{model}-0", 0.6)])


def outcome_for(request: GenerationRequest, images: list[GeneratedImage],
                failures: list[FailedImage] | None = None) -> RunOutcome:
    finals = []
    for position, image in enumerate(sorted(images, key=lambda i: i.task.index)):
        score = weight_free_score(np.asarray(Image.open(__import__("io").BytesIO(image.png)).convert("RGB")),
                                  (image.width, image.height))
        finals.append(FinalImage(position, image, score, file_url(request.folder_name, position)))
    primary = max(range(len(finals)), key=lambda i: finals[i].quality.overall) if finals else None
    models = list(dict.fromkeys(i.task.model for i in images)) or ["tiny-flux"]
    return RunOutcome(
        request=request, plan_models=models, selection_reason="test", prompt_analysis={}, base_seed=0,
        planned_total=len(images) + len(failures or []), images=finals, failures=failures or [],
        primary=primary, total_seconds=1.5, started_at="2026-01-01T00:00:00+00:00",
        folder_display=str(request.folder_name),
    )


def read_json(path: Path):
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def scripted_registry(tmp_path: Path, models: dict[str, dict], smart_selection: dict | None = None):
    """A models.yaml of scripted test models (see tests/scripted_backend.py).

    Each value: spec fields plus `script:` (the call_args). Local by default with a quarter of a
    24 GB logical card; `remote: true` makes it behave like an API model.
    """
    import yaml

    from models.registry import load_registry

    entries = {}
    for model_id, fields in models.items():
        fields = dict(fields)
        script = dict(fields.pop("script", {}))
        script.setdefault("log", str(tmp_path / "calls.jsonl"))
        script.setdefault("counter", str(tmp_path / f"{model_id}.counter"))
        entry = {
            "backend": "custom",
            "factory": "tests.scripted_backend:ScriptedGenerator",
            "weights": "random",
            "width": 32,
            "height": 32,
            "steps": 1,
            "gpus": 0.25,
            "gpu_memory_gb": 6,
            "max_batch_size": 1,
            "auto_select": False,
            "call_args": script,
        }
        entry.update(fields)
        entries[model_id] = entry
    path = tmp_path / "scripted-models.yaml"
    doc = {"models": entries}
    if smart_selection:
        doc["smart_selection"] = smart_selection
    path.write_text(yaml.safe_dump(doc))
    return load_registry(path)


def make_request(registry, tmp_path: Path, **raw):
    from cluster.planning.request import parse_request

    base = {"image_prompt": "a red fox", "folder_name": "out"}
    base.update({k: (None if v is None else str(v)) for k, v in raw.items()})
    return parse_request(base, registry, cwd=tmp_path)


def quick_limits(**overrides):
    from cluster.planning.limits import load_limits

    defaults = {"memory_limit_per_image": "50MB", "placement_timeout": 5, "cancel_grace": 1.0,
                "backoff_base": 0.05, "backoff_max": 0.2}
    defaults.update(overrides)
    return load_limits().with_overrides(defaults)
