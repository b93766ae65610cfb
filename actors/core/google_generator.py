"""Google's image models through google-genai, in Vertex AI mode. No Ray in here.

Two API styles, chosen by the model's `api_style`:
- `predict`: Imagen's `client.models.generate_images` (Vertex-only in the SDK, deprecated in
  favour of Gemini image models but still the way to reach imagen-3/4). Up to 4 images per
  request; one prompt, one seed per request (so with a seed, one image per request).
- `generate_content`: Gemini image models with `response_modalities=["IMAGE"]`; one image per
  response part (`inline_data`), one image per request here.

Credentials: GOOGLE_API_KEY (Vertex express mode), or Application Default Credentials with
GOOGLE_CLOUD_PROJECT / GOOGLE_CLOUD_LOCATION. GOOGLE_VERTEX_BASE_URL overrides the endpoint; it
is passed as HttpOptions(base_url=...) here because the SDK ignores it when an API key is set.
The SDK's own retries are off: the scheduler retries, so every attempt is recorded.
"""

from __future__ import annotations

import io
import math
import time
import warnings

from actors.core.google_errors import classify
from cluster import env
from cluster.errors import ImageGenError
from cluster.output.png import encode_png
from cluster.work import CallOptions, FailedImage, GeneratedImage, ImageTask
from models.registry import ModelSpec

PREDICT_RATIOS = ("1:1", "3:4", "4:3", "9:16", "16:9")
CONTENT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
BLOCKED_FINISH_REASONS = {"SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_PROHIBITED_CONTENT",
                          "RECITATION", "IMAGE_RECITATION"}


def aspect_ratio(width: int, height: int, supported: tuple[str, ...]) -> str:
    """The supported ratio closest to width:height (on a log scale, so 2:1 and 1:2 are alike far)."""
    target = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = (int(x) for x in ratio.split(":"))
        return abs(math.log(w / h) - target)

    return min(supported, key=distance)


def vertex_client(creds: env.GoogleCredentials, timeout_s: float, label: str):
    """A google-genai client in Vertex AI mode; IMG_007 when the credentials cannot make one. The
    endpoint override is passed as HttpOptions: the SDK ignores the variable when a key is set."""
    from google import genai
    from google.genai import types

    http_options = types.HttpOptions(base_url=creds.base_url, timeout=int(timeout_s * 1000),
                                     retry_options=types.HttpRetryOptions(attempts=1))
    try:
        if creds.api_key:
            return genai.Client(vertexai=True, api_key=creds.api_key, http_options=http_options)
        return genai.Client(vertexai=True, project=creds.project, location=creds.location, http_options=http_options)
    except Exception as exc:  # noqa: BLE001 - e.g. ADC that cannot be loaded
        raise ImageGenError("IMG_007", creds.redact(f"{label}: {type(exc).__name__}: {exc}")) from None


class GoogleImageGenerator:
    def __init__(self, spec: ModelSpec, replica: str = "", credentials: env.GoogleCredentials | None = None):
        from google.genai import types

        started = time.perf_counter()
        self.spec = spec
        self.replica = replica
        self.device = "remote"
        self.dtype = ""
        self._types = types
        creds = credentials if credentials is not None and credentials.present else env.google_credentials()
        self._redact = creds.redact
        if not creds.present:
            raise ImageGenError(
                "IMG_007", f"model {spec.id!r}: no Google credentials on this node: set GOOGLE_API_KEY, or "
                "GOOGLE_CLOUD_PROJECT with Application Default Credentials.",
            )
        self.client = vertex_client(creds, spec.request_timeout_s, f"model {spec.id!r}")
        self.load_seconds = time.perf_counter() - started

    def generate(self, tasks: list[ImageTask], call_id: str = "",
                 options: CallOptions | None = None) -> list[GeneratedImage | FailedImage]:
        timeout_s = self.spec.request_timeout_s
        budget_limited = False
        if options is not None:
            if options.request_timeout_s:
                timeout_s = min(timeout_s, options.request_timeout_s)
            if options.budget_s is not None and options.budget_s <= timeout_s:
                timeout_s, budget_limited = max(0.5, options.budget_s), True
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the SDK's deprecation notice for generate_images
                if self.spec.api_style == "predict":
                    results = self._predict(tasks, timeout_s, budget_limited)
                else:
                    results = [self._generate_content(task, timeout_s) for task in tasks]
        except Exception as exc:  # noqa: BLE001 - every failure is classified into an IMG code
            raise classify(exc, self.spec.id, self._redact, budget_hit=budget_limited) from None
        elapsed = (time.perf_counter() - started) / max(1, len(tasks))
        for item in results:
            if isinstance(item, GeneratedImage):
                item.seconds = elapsed
        return results

    def _http(self, timeout_s: float):
        return self._types.HttpOptions(timeout=max(1, int(timeout_s * 1000)),
                                       retry_options=self._types.HttpRetryOptions(attempts=1))

    def _predict(self, tasks: list[ImageTask], timeout_s: float,
                 budget_limited: bool = False) -> list[GeneratedImage | FailedImage]:
        # Imagen takes a seed only with its SynthID watermark off, and then one seed per request: the
        # k-th image of a multi-image request is not reproducible from any seed it could record. So
        # with the watermark off each image is its own request with its own seed; with it on (the
        # default) no seed is sent, one request makes the batch and every image records no seed.
        watermark = bool(self.spec.call_args.get("add_watermark", True))
        if watermark:
            return self._predict_request(tasks, None, timeout_s)
        # A budget is for the whole call, so the requests share it; a request timeout is per request.
        deadline = time.monotonic() + timeout_s if budget_limited else None
        results: list[GeneratedImage | FailedImage] = []
        for task in tasks:
            limit = timeout_s if deadline is None else deadline - time.monotonic()
            if limit <= 0:
                raise TimeoutError("the call's time budget ran out between per-seed requests")
            results.extend(self._predict_request([task], task.seed, limit))
        return results

    def _predict_request(self, tasks: list[ImageTask], seed: int | None,
                         timeout_s: float) -> list[GeneratedImage | FailedImage]:
        types = self._types
        first = tasks[0]
        args = dict(self.spec.call_args)
        watermark = bool(args.pop("add_watermark", True))
        config = types.GenerateImagesConfig(
            number_of_images=len(tasks),
            aspect_ratio=aspect_ratio(first.width, first.height, PREDICT_RATIOS),
            include_rai_reason=True,
            add_watermark=watermark,
            seed=seed,
            http_options=self._http(timeout_s),
            **args,
        )
        response = self.client.models.generate_images(model=self.spec.api_model, prompt=first.prompt, config=config)
        generated = list(response.generated_images or [])
        results: list[GeneratedImage | FailedImage] = []
        for i, task in enumerate(tasks):
            task = _with_seed(task, seed)  # the seed sent, not the one planned: None with the watermark on
            item = generated[i] if i < len(generated) else None
            data = item.image.image_bytes if item is not None and item.image is not None else None
            if not data:
                reason = (item.rai_filtered_reason if item is not None else None) or "the API returned no image"
                results.append(FailedImage(task, "IMG_023", self._redact(f"{self.spec.id}: filtered: {reason}")))
                continue
            results.append(self._result(task, data, sample_index=i))
        return results

    def _generate_content(self, task: ImageTask, timeout_s: float) -> GeneratedImage | FailedImage:
        types = self._types
        config = types.GenerateContentConfig(
            response_modalities=["IMAGE"],
            seed=task.seed,
            image_config=types.ImageConfig(aspect_ratio=aspect_ratio(task.width, task.height, CONTENT_RATIOS)),
            http_options=self._http(timeout_s),
            **self.spec.call_args,
        )
        response = self.client.models.generate_content(model=self.spec.api_model, contents=task.prompt, config=config)
        for candidate in response.candidates or []:
            for part in (candidate.content.parts if candidate.content else None) or []:
                if part.inline_data is not None and part.inline_data.data:
                    return self._result(task, part.inline_data.data, sample_index=0)
        reasons = []
        feedback = getattr(response, "prompt_feedback", None)
        if feedback is not None and feedback.block_reason:
            reasons.append(str(feedback.block_reason))
        for candidate in response.candidates or []:
            if candidate.finish_reason is not None:
                reasons.append(str(getattr(candidate.finish_reason, "value", candidate.finish_reason)))
        if any(r.split(".")[-1] in BLOCKED_FINISH_REASONS or "BLOCK" in r.upper() for r in reasons):
            return FailedImage(task, "IMG_023", f"{self.spec.id}: filtered: {', '.join(reasons)}")
        return FailedImage(task, "IMG_020", f"{self.spec.id}: the response held no image ({', '.join(reasons) or 'empty'})")

    def _result(self, task: ImageTask, data: bytes, sample_index: int) -> GeneratedImage | FailedImage:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                rgb = image.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            return FailedImage(task, "IMG_020", f"{self.spec.id}: the returned image cannot be decoded ({exc})")
        return GeneratedImage(
            task=task,
            png=encode_png(rgb, task, self.spec.api_model),
            seconds=0.0,
            replica=self.replica,
            width=rgb.width,
            height=rgb.height,
            weights=self.spec.weights,
            extra={"api_model": self.spec.api_model, "api_style": self.spec.api_style, "sample_index": sample_index},
        )


def _with_seed(task: ImageTask, seed: int | None) -> ImageTask:
    from dataclasses import replace

    return replace(task, seed=seed)
