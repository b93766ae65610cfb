"""The OpenAI Images API as this server speaks it: request bodies, the error envelope, and how a
request becomes the same raw inputs `multi-image generate` validates. Pure: no Ray, no HTTP.

Accepted and how they map:
- `model`: a registry id, or `auto` (the smart strategy picks, as with `--models auto`);
- `prompt`: as `--image-prompt` (1-2000 characters); `n`: 1-10, as `--image-count`;
- `size`: "WIDTHxHEIGHT" (multiples of 16) or "auto" (the model's own);
- `response_format`: `b64_json` (default) or `url`;
- `quality`, `style`, `output_format`, `background`, `moderation`: accepted and ignored (FLUX has
  no such switches; `output_format` other than png is refused); `user`: recorded with the request.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cluster.errors import ERROR_CODES, ImageGenError

MAX_BODY_BYTES = 64 * 1024

# IMG code -> HTTP status (anything not listed: by its exit status, 2 -> 400, else 500)
STATUS = {"IMG_002": 404, "IMG_003": 504, "IMG_006": 429, "IMG_007": 502, "IMG_008": 502, "IMG_010": 503,
          "IMG_019": 503, "IMG_021": 503, "IMG_005": 507, "IMG_029": 429}


class ImagesRequest(BaseModel):
    """POST /v1/images/generations (OpenAI's fields; unknown ones are ignored, as OpenAI clients
    add new ones over time)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(description="The prompt.")
    model: str = Field("auto", description="A registry model id, or auto.")
    n: int = Field(1, description="Images to make, 1-10.")
    size: str = Field("auto", description="WIDTHxHEIGHT, or auto for the model's default.")
    response_format: Literal["b64_json", "url"] = "b64_json"
    quality: str | None = None
    style: str | None = None
    output_format: str | None = None
    background: str | None = None
    moderation: str | None = None
    user: str | None = Field(None, max_length=256)


def status_for(error: ImageGenError) -> int:
    if error.code in STATUS:
        return STATUS[error.code]
    return 400 if ERROR_CODES[error.code][1] == 2 else 500


# what retrying cannot change: the input, a timeout the same request would hit again, a key's
# spent budget, a full disk
NO_RETRY = {"IMG_003", "IMG_005", "IMG_029"}


def retry_helps(error: ImageGenError, status: int) -> bool:
    if error.code in NO_RETRY:
        return False
    return status == 429 or status >= 500


def envelope(error: ImageGenError, param: str | None = None, status: int | None = None) -> dict:
    status = status or status_for(error)
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
            429: "rate_limit_error"}.get(status, "server_error")
    return {"error": {"message": error.message, "type": kind, "param": param, "code": error.code}}


def parse_images_request(body: Any) -> ImagesRequest:
    if not isinstance(body, dict):
        raise ImageGenError("IMG_011", "the request body must be a JSON object.")
    try:
        request = ImagesRequest(**body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise ImageGenError("IMG_011", f"{field}: {first['msg']}") from None
    if request.output_format not in (None, "png"):
        raise ImageGenError("IMG_011", f"output_format {request.output_format!r}: this server makes PNG images.")
    return request


def raw_inputs(request: ImagesRequest, folder: str, scorer: str | None,
               upload_uri: str | None = None) -> dict[str, str | None]:
    """The `generate` inputs (the Action's names) an images request means."""
    width = height = None
    if request.size != "auto":
        parts = request.size.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ImageGenError("IMG_017", f"size {request.size!r} must be WIDTHxHEIGHT, e.g. 1024x1024, or auto.")
        width, height = (p.strip() for p in parts)
    if not 1 <= request.n <= 10:
        raise ImageGenError("IMG_001", f"n {request.n} must be 1-10.")
    return {"image_prompt": request.prompt, "folder_name": folder, "image_count": str(request.n),
            "models": request.model, "width": width, "height": height, "scorer": scorer,
            "generation_strategy": "parallel" if request.model != "auto" else None, "upload_uri": upload_uri}


def multi_image_inputs(body: Any, folder: str, scorer: str | None,
                       upload_uri: str | None = None) -> dict[str, str | None]:
    """POST /v1/multi-image: the design card's request, with the Action's input names."""
    allowed = {"image-prompt", "image-count", "models", "generation-strategy", "enable-comparison",
               "quality-threshold", "max-parallel", "seed", "width", "height", "steps", "scorer", "folder-name"}
    if not isinstance(body, dict):
        raise ImageGenError("IMG_011", "the request body must be a JSON object of the Action's inputs.")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ImageGenError("IMG_011", f"unknown input(s): {', '.join(map(repr, unknown))}; this endpoint takes "
                                       f"{', '.join(sorted(allowed))}.")
    raw = {k.replace("-", "_"): (None if v is None else str(v)) for k, v in body.items() if k != "folder-name"}
    raw["folder_name"] = folder
    raw.setdefault("scorer", scorer)
    raw["upload_uri"] = upload_uri  # the server's, not the caller's: clients do not pick its buckets
    return raw
