"""Typed, picklable units of work and their results, passed between the driver and actors.

Plain dataclasses of bytes and numbers: no tensors, no PIL objects, nothing CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class ImageTask:
    """One image to make. `index` is its 0-based place in the output (file `generated-image-{index+1}.png`)."""

    index: int
    model: str
    prompt: str
    seed: int | None  # None: the backend could not take a seed (e.g. Imagen with its watermark on)
    width: int
    height: int
    steps: int | None
    guidance: float | None
    prompt_variation: str = "original"
    original_prompt: str = ""  # the user's prompt, when `prompt` is its translation
    language: str = ""  # the prompt's detected language, when not English
    translator: str = ""  # what translated it
    english_prompt: str = ""  # what prompt analysis and CLIP alignment read, when the prompt is not English

    def with_model(self, model: str, steps: int | None, guidance: float | None, width: int, height: int) -> "ImageTask":
        return replace(self, model=model, steps=steps, guidance=guidance, width=width, height=height)


@dataclass(frozen=True)
class CallOptions:
    """What the scheduler tells a backend about one call's time."""

    budget_s: float | None = None  # seconds left before the images' timeout_per_image
    request_timeout_s: float | None = None  # a remote request's own timeout (shorter after network errors)


@dataclass(frozen=True)
class Attempt:
    """One try at an image: which model and replica, how it ended, how long it took."""

    model: str
    replica: str
    seconds: float
    code: str | None = None  # None: the attempt made the image
    message: str = ""


@dataclass
class GeneratedImage:
    """A finished image: PNG bytes (with the task's text metadata already embedded)."""

    task: ImageTask
    png: bytes
    seconds: float  # wall time of the call that made it, divided among its batch
    replica: str
    width: int
    height: int
    weights: str = "real"
    nonfinite_fraction: float = 0.0  # share of NaN/inf values in the decoded pixels
    extra: dict = field(default_factory=dict)  # backend details worth recording (api model, sample index)
    attempts: list[Attempt] = field(default_factory=list)
    remote_url: str | None = None
    # what each text encoder cut of the prompt (models.prompt_length; [] none); None: not counted by its backend
    prompt_truncation: list[dict] | None = None


@dataclass
class FailedImage:
    task: ImageTask
    code: str
    message: str
    attempts: list[Attempt] = field(default_factory=list)


@dataclass
class ReplicaInfo:
    """What a model replica reports about itself once loaded."""

    model: str
    replica: str
    node_id: str
    device: str
    dtype: str
    weights: str
    load_seconds: float
    peak_gpu_memory_bytes: int | None = None
    gpu_ids: list[str] = field(default_factory=list)
    warm: bool = False
    restarts: int = 0
    pid: int = 0
    note: str = ""  # e.g. why a replica Ray gave a GPU runs on the CPU
    memory_plan: dict | None = None  # MemoryPlan.as_dict() of the plan it holds the model with
    speed: dict | None = None  # speed options applied and skipped, with reasons (actors.core.speed)
    card: str = ""  # the CUDA device's name, "cpu", or "" for a remote model: what its time costs
    gpu_share: float = 0.0  # the fraction of a card Ray gave it (0: none)
