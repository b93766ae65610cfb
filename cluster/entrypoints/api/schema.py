"""The OpenAI Images API as this server speaks it: request bodies, the API's own caps, the error
envelope, and how a request becomes the same raw inputs `multi-image generate` validates. Pure:
no Ray, no HTTP.

Accepted and how they map:
- `model`: one registry id (or one of its aliases), or `auto` (the smart strategy picks);
- `prompt`: as `--image-prompt`; `n`: 1-10 (a JSON integer), as `--image-count`;
- `size`: "WIDTHxHEIGHT" (multiples of 16, at most the model's `max_side`) or "auto";
- `response_format`: `b64_json` (default) or `url`;
- `quality`, `style`, `output_format`, `background`, `moderation`: accepted and ignored (FLUX has
  no such switches; `output_format` other than png is refused); `user`: recorded with the request;
  `stream: true` is refused (whole images only). A field sent as `null` counts as absent.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cluster.errors import ERROR_CODES, ImageGenError
from cluster.planning.request import MIN_SIDE, SIDE_MULTIPLE
from models.prompt_length import max_prompt_chars

MAX_BODY_BYTES = 64 * 1024  # beside the prompt (max_body_bytes)
# The API's own caps, below the CLI's: what one request of a remote client may ask of the cluster
MAX_IMAGES = 10  # images per request: n, or image-count x the models listed
MAX_STEPS = 50
MAX_PARALLEL = 8
MAX_SIDE = 2048  # and never more than a model's own `max_side`
MULTI_IMAGE_INPUTS = ("image-prompt", "image-count", "models", "generation-strategy", "enable-comparison",
                      "quality-threshold", "max-parallel", "seed", "width", "height", "steps", "scorer", "folder-name",
                      "adapters")

# IMG code -> HTTP status (anything not listed: by its exit status, 2 -> 400, else 500)
STATUS = {"IMG_002": 404, "IMG_003": 504, "IMG_006": 429, "IMG_007": 502, "IMG_008": 502, "IMG_010": 503,
          "IMG_019": 503, "IMG_021": 503, "IMG_005": 507, "IMG_029": 429}
# what retrying cannot change: a timeout the same request would hit again, a key's spent budget,
# a full disk (and every 4xx but "busy")
NO_RETRY = {"IMG_003", "IMG_005", "IMG_029"}
# the code of an error in a field
CODE_OF_FIELD = {"prompt": "IMG_009", "n": "IMG_001", "size": "IMG_017", "model": "IMG_002"}
NUMERIC_INPUTS = {"image-count": "IMG_001", "max-parallel": "IMG_014", "seed": "IMG_017", "width": "IMG_017",
                  "height": "IMG_017", "steps": "IMG_017"}
_WHOLE = re.compile(r"[0-9]{1,10}")
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")


class ApiError(ImageGenError):
    """An error of the request as HTTP sees it: `param` names the field at fault in the envelope;
    `status` overrides the code's HTTP status (413 too large, 408 too slow)."""

    def __init__(self, code: str, message: str, param: str | None = None, status: int | None = None):
        super().__init__(code, message)
        self.param = param
        self.status = status

    def __reduce__(self):
        return (type(self), (self.code, self.message, self.param, self.status))


class ImagesRequest(BaseModel):
    """POST /v1/images/generations (OpenAI's fields, strictly typed; unknown ones are ignored, as
    OpenAI clients add new ones over time)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    prompt: str = Field(description="The prompt.")
    model: str = Field("auto", description="A registry model id or alias, or auto.")
    n: int = Field(1, description="Images to make, 1-10.")
    size: str = Field("auto", description="WIDTHxHEIGHT, or auto for the model's default.")
    response_format: Literal["b64_json", "url"] = "b64_json"
    stream: bool = False
    quality: str | None = None
    style: str | None = None
    output_format: str | None = None
    background: str | None = None
    moderation: str | None = None
    user: str | None = Field(None, max_length=256)
    # ours, which the openai client sends through extra_body: "ID[:SCALE],..." or a list of ids,
    # "ID:SCALE" strings or {"id", "scale"} objects (GET /v1/models lists them and the models they fit)
    adapters: str | list[str | dict[str, str | float | int]] | None = Field(
        None, description="LoRA adapters of configs/adapters.yaml, as --adapters takes them.")

    def dimensions(self) -> tuple[int, int] | None:
        if self.size == "auto":
            return None
        width, height = _SIZE.fullmatch(self.size).groups()
        return int(width), int(height)


def status_for(error: ImageGenError) -> int:
    if getattr(error, "status", None):
        return error.status
    if error.code in STATUS:
        return STATUS[error.code]
    return 400 if ERROR_CODES[error.code][1] == 2 else 500


def retry_helps(error: ImageGenError, status: int) -> bool:
    if error.code in NO_RETRY:
        return False
    return status == 429 or status >= 500


def envelope(error: ImageGenError, param: str | None = None, status: int | None = None) -> dict:
    status = status or status_for(error)
    kind = {401: "authentication_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    param = param or getattr(error, "param", None)
    return {"error": {"message": error.message, "type": kind, "param": param, "code": error.code}}


def present(body: dict) -> dict:
    """`body` without the fields sent as null: OpenAI clients send unset options as null."""
    return {k: v for k, v in body.items() if v is not None}


def check_text(body: Any, where: str = "body") -> None:
    """Every string of `body` is valid Unicode (JSON may carry an unpaired surrogate, which no
    file, log or model can take)."""
    if isinstance(body, str):
        try:
            body.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError("IMG_011", f"{where} holds text that is not valid Unicode (an unpaired surrogate).",
                             None if where == "body" else where) from None
    elif isinstance(body, dict):
        for key, value in body.items():
            check_text(key)
            check_text(value, str(key))
    elif isinstance(body, list):
        for value in body:
            check_text(value, where)


def parse_images_request(body: Any, registry) -> ImagesRequest:
    if not isinstance(body, dict):
        raise ApiError("IMG_011", "the request body must be a JSON object.")
    try:
        request = ImagesRequest(**present(body))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(CODE_OF_FIELD.get(field, "IMG_011"), f"{field}: {first['msg']}.", field) from None
    if request.stream:
        raise ApiError("IMG_011", "stream: this server answers with whole images, not streamed partial ones; "
                                    "leave stream out or send false.", "stream")
    if request.output_format not in (None, "png"):
        raise ApiError("IMG_011", f"output_format {request.output_format!r}: this server makes PNG images.",
                         "output_format")
    check_prompt(request.prompt, "prompt", max_prompt_chars(registry))
    request = request.model_copy(update={"adapters": adapters_value(request.adapters)})
    if not 1 <= request.n <= MAX_IMAGES:
        raise ApiError("IMG_001", f"n {request.n} is out of range; give 1 to {MAX_IMAGES}.", "n")
    specs = model_specs(request.model, registry, "model")
    if request.size != "auto":
        if not _SIZE.fullmatch(request.size):
            raise ApiError("IMG_017", f"size {request.size!r} must be WIDTHxHEIGHT in digits, e.g. 1024x1024, "
                                        "or auto.", "size")
        for side in request.dimensions():
            check_side(side, specs, "size")
    return request.model_copy(update={"model": specs[0].id if request.model != "auto" else "auto"})


def adapters_value(value) -> str | None:
    """The `adapters` field as the --adapters string the request parser checks (IMG_031 when malformed)."""
    if value is None or isinstance(value, str):
        return value
    parts = []
    for item in value:
        if isinstance(item, dict):
            unknown = set(item) - {"id", "scale"}
            if "id" not in item or unknown or not isinstance(item["id"], str):
                raise ApiError("IMG_031", "adapters: each object needs an `id` (a string) and may have a `scale`.",
                               "adapters")
            item = f"{item['id']}:{item['scale']}" if "scale" in item else item["id"]
        parts.append(item)
    return ",".join(parts)


def check_prompt(prompt: str, field: str, limit: int) -> None:
    text = prompt.strip()
    if not text:
        raise ApiError("IMG_009", f"{field} is empty; describe the image to generate.", field)
    if any(ord(c) < 32 and c not in "\n\t\r" for c in text):
        raise ApiError("IMG_009", f"{field} holds control characters; send plain text.", field)
    if len(text) > limit:
        raise ApiError("IMG_009", f"{field} is {len(text)} characters long; keep it within {limit} (the longest "
                                    "prompt a model of this server reads).", field)


def max_body_bytes(registry) -> int:
    """The request body's limit: MAX_BODY_BYTES for the rest, and room for the longest prompt the
    server takes, each character escaped in JSON (\\uXXXX, 6 bytes) at worst."""
    return MAX_BODY_BYTES + 6 * max_prompt_chars(registry)


def model_specs(value: str, registry, field: str) -> list:
    """The specs a `model`/`models` value names (one id or alias; with `models`, a comma list), or
    for `auto` every model auto may pick; IMG_002 otherwise."""
    names = [part.strip() for part in value.split(",")] if field == "models" else [value.strip()]
    if names == ["auto"]:
        return [s for s in registry if s.auto_select] or list(registry)
    if field == "model" and "," in value:
        raise ApiError("IMG_011", "model names one model; for several at once, use POST /v1/multi-image "
                                    "with `models`.", field)
    specs = []
    for name in names:
        spec = registry.resolve(name) if name else None
        if spec is None:
            known = ", ".join(s.id for s in registry)
            raise ApiError("IMG_002", f"{field}: {name!r} is not a model of this server; GET /v1/models lists "
                                        f"them ({known}).", field)
        specs.append(spec)
    return specs


def largest_side(spec) -> int:
    return min(MAX_SIDE, spec.max_side)


def check_side(side: int, specs: list, field: str) -> None:
    top = min(largest_side(s) for s in specs)
    if not MIN_SIDE <= side <= top:
        raise ApiError("IMG_017", f"{field}: {side} is out of range; give {MIN_SIDE} to {top} for "
                                    f"{' / '.join(s.id for s in specs[:3])}.", field)
    if side % SIDE_MULTIPLE:
        raise ApiError("IMG_017", f"{field}: {side} is not a multiple of {SIDE_MULTIPLE}; try "
                                    f"{side // SIDE_MULTIPLE * SIDE_MULTIPLE or SIDE_MULTIPLE}.", field)


def raw_inputs(request: ImagesRequest, folder: str, scorer: str | None,
               upload_uri: str | None = None) -> dict[str, str | None]:
    """The `generate` inputs (the Action's names) a checked images request means. One image is scored
    without a CLIP model: with nothing to choose between and no score in the OpenAI answer, a scorer's
    call would be paid for nothing (its weight-free quality is still in the report)."""
    size = request.dimensions()
    return {"image_prompt": request.prompt, "folder_name": folder, "image_count": str(request.n),
            "models": request.model, "width": str(size[0]) if size else None,
            "height": str(size[1]) if size else None, "scorer": scorer if request.n > 1 else "none",
            "generation_strategy": "parallel" if request.model != "auto" else None, "upload_uri": upload_uri,
            "adapters": request.adapters}


def multi_image_inputs(body: Any, folder: str, scorer: str | None, registry,
                       upload_uri: str | None = None) -> dict[str, str | None]:
    """POST /v1/multi-image: the design card's request, with the Action's input names, within the
    API's caps."""
    if not isinstance(body, dict):
        raise ApiError("IMG_011", "the request body must be a JSON object of the Action's inputs.")
    body = present(body)
    unknown = sorted(set(body) - set(MULTI_IMAGE_INPUTS))
    if unknown:
        raise ApiError("IMG_011", f"unknown input(s): {', '.join(map(repr, unknown))}; this endpoint takes "
                                    f"{', '.join(sorted(MULTI_IMAGE_INPUTS))}.", unknown[0])
    for name, value in body.items():
        if isinstance(value, (dict, list)):
            raise ApiError("IMG_011", f"{name} must be a string, a number or a boolean.", name)
        if name in NUMERIC_INPUTS and (isinstance(value, (bool, float)) or not _WHOLE.fullmatch(str(value).strip())):
            raise ApiError(NUMERIC_INPUTS[name], f"{name} {value!r} must be a whole number in ASCII digits.", name)
    raw = {k.replace("-", "_"): str(v).lower() if isinstance(v, bool) else str(v)
           for k, v in body.items() if k != "folder-name"}
    specs = check_multi_image_caps(raw, registry)
    if (raw.get("models") or "auto").strip() != "auto":
        raw["models"] = ",".join(dict.fromkeys(s.id for s in specs))  # aliases to the ids the run knows
    raw["folder_name"] = folder
    raw.setdefault("scorer", scorer)
    raw["upload_uri"] = upload_uri  # the server's, not the caller's: clients do not pick its buckets
    return raw


def check_multi_image_caps(raw: dict[str, str], registry) -> list:
    """The API's caps on what `generate` would accept: images per request, steps, parallelism,
    sides within each model's largest. (Malformed values are left to the request's parser.)"""
    if "image_prompt" in raw:
        check_prompt(raw["image_prompt"], "image-prompt", max_prompt_chars(registry))
    specs = model_specs(raw.get("models") or "auto", registry, "models")
    count = _int(raw.get("image_count"), 1)
    listed = 1 if (raw.get("models") or "auto").strip() == "auto" else len(specs)
    if count is not None and count * listed > MAX_IMAGES:
        raise ApiError("IMG_001", f"image-count {count} x {listed} model(s) is {count * listed} images; this "
                                    f"server makes at most {MAX_IMAGES} per request.", "image-count")
    steps = _int(raw.get("steps"), None)
    if steps is not None and steps > MAX_STEPS:
        raise ApiError("IMG_017", f"steps {steps} is out of range here; give 1 to {MAX_STEPS}.", "steps")
    parallel = _int(raw.get("max_parallel"), None)
    if parallel is not None and parallel > MAX_PARALLEL:
        raise ApiError("IMG_014", f"max-parallel {parallel} is out of range here; give 1 to {MAX_PARALLEL}.",
                         "max-parallel")
    for name in ("width", "height"):
        side = _int(raw.get(name), None)
        if side is not None:
            check_side(side, specs, name)
    return specs


def _int(value: str | None, default: int | None) -> int | None:
    return int(value) if value is not None and value.strip() else default
