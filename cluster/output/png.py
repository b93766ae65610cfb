"""PNG files that say how they were made, so any image can be reproduced from itself."""

from __future__ import annotations

import io
import json

from PIL import Image, PngImagePlugin

from cluster.work import ImageTask

# Text chunk carrying everything as one JSON document; the single keys are for humans and tools.
PARAMETERS_KEY = "kamui:parameters"


def task_metadata(task: ImageTask, model_source: str | None = None) -> dict[str, str]:
    params = {
        "prompt": task.prompt,
        "model": task.model,
        "seed": task.seed,
        "steps": task.steps,
        "guidance": task.guidance,
        "width": task.width,
        "height": task.height,
        "prompt_variation": task.prompt_variation,
    }
    if model_source:
        params["model_source"] = model_source
    if task.language:  # a prompt not in English: what the user wrote and what the model received
        params.update(original_prompt=task.original_prompt or task.prompt, language=task.language,
                      translator=task.translator or None)
    text = {k: "" if v is None else str(v) for k, v in params.items()}
    text["size"] = f"{task.width}x{task.height}"
    text[PARAMETERS_KEY] = json.dumps(params, ensure_ascii=False, sort_keys=True)
    return text


def encode_png(image: Image.Image, task: ImageTask, model_source: str | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in task_metadata(task, model_source).items():
        # iTXt keeps non-Latin-1 prompts (Japanese ones, say) intact.
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_parameters(png: bytes) -> dict:
    with Image.open(io.BytesIO(png)) as image:
        return json.loads(image.text[PARAMETERS_KEY])


def decode(png: bytes) -> Image.Image:
    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB")
