"""A diffusers text-to-image pipeline, loaded once and kept resident. No Ray in here.

The Ray actor (`actors.model_actor`) constructs this after Ray has set
CUDA_VISIBLE_DEVICES, so `cuda` below is the card Ray assigned.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import OrderedDict
from pathlib import Path

from actors.core.memory_apply import build_planned, load_planned
from actors.core.speed import CompiledCalls, apply_speed, preflight
from models.real_size import ARCH_BUILDERS
from cluster.errors import ImageGenError
from cluster.planning.memory.planner import PROMPT_CACHE_ENTRIES, MemoryPlan
from cluster.output.png import encode_png
from cluster.work import GeneratedImage, ImageTask
from models.registry import ModelSpec
from models.prompt_length import PromptReader

GIB = 1024**3
# Distinct prompts whose embeddings a replica keeps on its card (4 MiB each for FLUX's T5 at 512
# tokens); the memory planner counts them (cluster.planning.memory.planner.prompt_cache_gb).
EMBEDDING_CACHE = PROMPT_CACHE_ENTRIES


class GenerationCancelled(ImageGenError):
    pass


def card_placement(free_bytes: list[int]) -> dict:
    """How the pipeline goes onto the cards Ray assigned this replica (`free_bytes`: free memory of
    each visible card). One card: the whole pipeline on it. Several: its components spread over
    them by diffusers' `balanced` device map, each card filled to 95% of what is free at most
    (CUDA's own context and fragmentation take the rest)."""
    if len(free_bytes) <= 1:
        return {}
    return {"device_map": "balanced", "max_memory": {i: int(free * 0.95) for i, free in enumerate(free_bytes)}}


def compute_dtype(name: str, cuda: bool, torch):
    """(dtype, note): the model's dtype on a card that computes it; bf16 on a card without bf16
    units (pre-Ampere: T4, 2080) becomes fp16, with the reason. On the CPU, float32: bf16 there is
    slow and some ops lack kernels (CPU runs are for tests and demos)."""
    if not cuda:
        return torch.float32, ""
    dtype = getattr(torch, name)
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        major, minor = torch.cuda.get_device_capability()
        return torch.float16, (f"bfloat16 is not supported by this card (compute capability {major}.{minor}): "
                               "computing in float16")
    return dtype, ""


class DiffusersGenerator:
    def __init__(self, spec: ModelSpec, cache_root: Path, replica: str = "", gpu_reserve_gb: float | None = None,
                 memory_plan: MemoryPlan | None = None):
        """`gpu_reserve_gb`: the GPU memory this replica's placement reserved (its memory plan's
        footprint); checked against what the assigned cards really have free. `memory_plan`: how
        to hold the model (default: resident)."""
        import torch
        import diffusers
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()

        self.spec = spec
        self.replica = replica
        self._torch = torch
        self._lock = threading.Lock()
        self._cancelled: dict[str, str] = {}
        self._embeddings: OrderedDict[tuple, tuple] = OrderedDict()
        self.text_encodes = 0  # prompts through the text encoders (the embedding cache's tests read it)
        self.memory_plan = memory_plan or MemoryPlan("resident")
        started = time.perf_counter()

        cuda = torch.cuda.is_available()
        self.device = "cuda" if cuda else "cpu"  # what components are moved to: never a display string
        self.card_name = torch.cuda.get_device_name(0) if cuda else "cpu"  # what its time costs
        self.dtype, self.dtype_note = compute_dtype(spec.dtype, cuda, torch)
        kind, value = spec.source_kind()
        built = kind == "builtin" and value in ARCH_BUILDERS
        placement: dict = {}
        if cuda:
            free = [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]
            self._check_free_memory(free, gpu_reserve_gb if gpu_reserve_gb is not None else spec.gpu_memory_gb)
            # a built architecture is made on one card by its plan; a loaded one spreads by device map
            placement = {} if built else card_placement(free)
            for i in range(len(free)):
                torch.cuda.reset_peak_memory_stats(i)
            if placement:
                self.memory_plan = MemoryPlan("device-map", gpu_gb=gpu_reserve_gb or 0.0, batch=self.memory_plan.batch,
                                              reason=f"components spread over {len(free)} cards")
        self.device_label = f"cuda:0-{len(free) - 1} (balanced)" if placement else self.device
        # explicit speed options the plan or the device cannot take are refused before anything loads
        record = preflight(spec.speedups, self.memory_plan, self.device, torch, spec.id)

        pipeline_cls = getattr(diffusers, spec.pipeline, None)
        if pipeline_cls is None:
            raise ImageGenError("IMG_018", f"model {spec.id!r}: diffusers has no pipeline class {spec.pipeline!r}.")
        if built:
            if not cuda:
                raise ImageGenError("IMG_010", f"model {spec.id!r} is a real-size architecture with random weights "
                                               "(about 34 GB in bf16): it needs a CUDA GPU; on the CPU use tiny-flux.")
            self.pipe = build_planned(value, self.memory_plan, self.device, self.dtype, torch)
        else:
            location = self._weights_location(cache_root)
            kwargs = {"torch_dtype": self.dtype, **placement}
            if spec.variant:
                kwargs["variant"] = spec.variant
            try:
                if placement:  # a device-mapped pipeline lands on its cards as it loads
                    self.pipe = pipeline_cls.from_pretrained(location, local_files_only=True, **kwargs)
                else:
                    self.pipe = load_planned(pipeline_cls, Path(location), kwargs, self.memory_plan, self.device, torch)
            except (OSError, ValueError) as exc:
                raise ImageGenError(
                    "IMG_002", f"model {spec.id!r}: loading {location} failed: {' '.join(str(exc).split())[:400]}"
                ) from None
        self.pipe.set_progress_bar_config(disable=True)
        self.speed = apply_speed(self.pipe, spec.speedups, record, spec.id)
        parameters = inspect.signature(self.pipe.__call__).parameters
        self._supports_callback = "callback_on_step_end" in parameters
        self.prompt_reader = PromptReader(spec.prompt_encoders, self.pipe)  # what its encoders cut, by their tokenizers
        # pipelines taking pooled embeddings (FLUX) get each prompt encoded once per replica
        self._reuses_embeddings = "pooled_prompt_embeds" in parameters and hasattr(self.pipe, "encode_prompt")
        self._compiled = CompiledCalls(torch) if "compile" in self.speed.applied else None
        if self._compiled is not None:
            self._warm_up()  # the compile happens here, in the load time, not in the first request
        if cuda:  # what the loaded model holds, not the build's transient peak
            for i in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(i)
        self.load_seconds = time.perf_counter() - started

    def _warm_up(self) -> None:
        """One call of batch 1 and one of the plan's largest batch (what the coalescer sends), at the
        model's default size: the graphs a first request and a first coalesced batch need."""
        spec = self.spec
        for batch in sorted({1, max(1, self.memory_plan.batch)}):
            self.generate([ImageTask(i, spec.id, "warm-up", i, spec.width, spec.height, spec.steps, spec.guidance)
                           for i in range(batch)])
        self._embeddings.clear()
        self.text_encodes = 0

    def _check_free_memory(self, free: list[int], need_gb: float) -> None:
        if sum(free) >= need_gb * GIB:
            return
        cards = ", ".join(f"cuda:{i} {f / GIB:.1f} GiB free" for i, f in enumerate(free))
        raise ImageGenError(
            "IMG_010",
            f"model {self.spec.id!r} needs {need_gb:g} GiB of GPU memory (weights and its batch), but the "
            f"card(s) Ray assigned have less ({cards}); another process holds the memory: free the card, or "
            "give Ray a smaller gpu_memory_gb for this node.",
        )

    def _weights_location(self, cache_root: Path) -> str:
        kind, value = self.spec.source_kind()
        if kind == "builtin":
            from models.tiny import tiny_pipeline_dir

            return str(tiny_pipeline_dir(value, cache_root))
        if kind == "local":
            return value
        from models.availability import hub_snapshot

        snapshot = hub_snapshot(value, self.spec.revision)
        if snapshot is None:
            raise ImageGenError(
                "IMG_002",
                f"model {self.spec.id!r}: {value} is not in this node's Hugging Face cache; "
                f"run `{self.spec.fetch_command()}` on every GPU node.",
            )
        return str(snapshot)

    @property
    def peak_gpu_memory_bytes(self) -> int | None:
        if not self.device.startswith("cuda"):
            return None
        torch = self._torch
        return int(sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())))

    def cancel(self, call_id: str, code: str = "IMG_003", reason: str = "cancelled") -> None:
        """Ask a running call to stop at its next denoising step (called from another thread)."""
        self._cancelled[call_id] = f"{code}|{reason}"

    def generate(self, tasks: list[ImageTask], call_id: str = "", options=None) -> list[GeneratedImage]:
        """One pipeline call for the whole batch; one CPU generator per image, so image i
        depends only on its own seed (a batch gives the same pixels as single calls)."""
        torch = self._torch
        first = tasks[0]
        if any((t.width, t.height, t.steps, t.guidance) != (first.width, first.height, first.steps, first.guidance)
               for t in tasks):
            raise ValueError("a batch must share size, steps and guidance")
        kwargs = dict(self.spec.call_args)
        kwargs.update(
            height=first.height,
            width=first.width,
            generator=[torch.Generator("cpu").manual_seed(t.seed) for t in tasks],
            output_type="np",
        )
        if first.steps is not None:
            kwargs["num_inference_steps"] = first.steps
        if first.guidance is not None:
            kwargs["guidance_scale"] = first.guidance
        budget = options.budget_s if options is not None else None
        with self._lock:
            started = time.perf_counter()
            kwargs.update(self._prompt_kwargs([t.prompt for t in tasks], kwargs.get("max_sequence_length")))
            if self._supports_callback:
                kwargs["callback_on_step_end"] = self._step_callback(call_id, started, budget)
            output = self._call_pipeline(kwargs, (len(tasks), first.width, first.height))
            elapsed = time.perf_counter() - started
        self._cancelled.pop(call_id, None)
        return [self._to_result(task, array, elapsed / len(tasks)) for task, array in zip(tasks, output.images)]

    def _call_pipeline(self, kwargs: dict, shape: tuple):
        def call():
            with self._torch.inference_mode():
                return self.pipe(**kwargs)

        return call() if self._compiled is None else self._compiled.run(shape, call)

    def _prompt_kwargs(self, prompts: list[str], max_sequence_length: int | None) -> dict:
        """The call's prompt arguments: the prompts themselves, or their cached embeddings. An
        offload plan then moves the text encoders onto the card once per new prompt, not per call."""
        if not self._reuses_embeddings:
            return {"prompt": prompts}
        torch = self._torch
        embeds, pooled = [], []
        for prompt in prompts:
            key = (prompt, max_sequence_length)
            if key in self._embeddings:
                self._embeddings.move_to_end(key)
            else:
                extra = {"max_sequence_length": max_sequence_length} if max_sequence_length else {}
                with torch.inference_mode():
                    prompt_embeds, pooled_embeds, _ = self.pipe.encode_prompt(
                        prompt=prompt, prompt_2=None, num_images_per_prompt=1, **extra)
                self.text_encodes += 1
                self._embeddings[key] = (prompt_embeds, pooled_embeds)
                while len(self._embeddings) > EMBEDDING_CACHE:
                    self._embeddings.popitem(last=False)
            embeds.append(self._embeddings[key][0])
            pooled.append(self._embeddings[key][1])
        return {"prompt_embeds": torch.cat(embeds), "pooled_prompt_embeds": torch.cat(pooled)}

    def _step_callback(self, call_id: str, started: float, budget: float | None):
        def on_step_end(pipe, step, timestep, callback_kwargs):
            reason = self._cancelled.pop(call_id, None)
            if reason is not None:
                code, _, message = reason.partition("|")
                raise GenerationCancelled(code, f"{self.spec.id}: {message} at step {step}")
            # the budget counts from when this call got the pipeline, not from when it was sent:
            # on a shared resident replica it may have waited behind another run's call
            if budget is not None and time.perf_counter() - started > budget:
                raise GenerationCancelled(
                    "IMG_003", f"{self.spec.id}: generation exceeded timeout_per_image ({budget:g}s) at step {step}")
            return callback_kwargs

        return on_step_end

    def _to_result(self, task: ImageTask, array, seconds: float) -> GeneratedImage:
        import numpy as np
        from PIL import Image

        finite = np.isfinite(array)
        nonfinite = float(1.0 - finite.mean())
        pixels = np.nan_to_num(array, nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)
        image = Image.fromarray((pixels * 255).round().astype("uint8"))
        return GeneratedImage(
            task=task,
            png=encode_png(image, task, self.spec.source),
            seconds=seconds,
            replica=self.replica,
            width=image.width,
            height=image.height,
            weights=self.spec.weights,
            nonfinite_fraction=nonfinite,
            prompt_truncation=self.prompt_reader(task.prompt),
        )
